//! Where a browser may be sent after its login: a relative path on the same site, or an absolute URL to an allowed host and port; everything else refused. Pure: text in, a checked target or a reason out.

use std::fmt;

/// One allowed redirect domain: a host, or with a leading dot a parent domain (itself and every
/// subdomain on a label boundary), with the ports it may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDomain {
    /// Lower-case host name, without a leading dot.
    host: Box<str>,
    /// `.example.com`: the host and its subdomains; `example.com`: the host only.
    with_subdomains: bool,
    ports: AllowedPorts,
}

/// Which ports an allowed domain may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AllowedPorts {
    /// No port, or the scheme's default one.
    Default,
    /// This one (or none, when it is the scheme's default).
    Only(u16),
    /// `:*`: any port.
    Any,
}

/// Why an allowed-domain entry of the settings cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedDomainError {
    /// The entry is not a host name.
    #[error("`{0}` is not a host name (letters, digits, `-` and `.`, an optional leading `.`)")]
    NotAHost(String),
    /// The entry's port is not a port.
    #[error("`{0}` has a port that is neither a number from 1 to 65535 nor `*`")]
    BadPort(String),
}

impl AllowedDomain {
    /// Reads `example.com`, `.example.com` (with subdomains), with an optional `:8443` or `:*`.
    pub fn parse(entry: &str) -> Result<Self, AllowedDomainError> {
        let (name, port) = match entry.rsplit_once(':') {
            Some((name, "*")) => (name, AllowedPorts::Any),
            Some((name, port)) => {
                let port = port.parse::<u16>().ok().filter(|port| *port != 0);
                (name, AllowedPorts::Only(port.ok_or_else(|| AllowedDomainError::BadPort(entry.into()))?))
            }
            None => (entry, AllowedPorts::Default),
        };
        let (host, with_subdomains) = match name.strip_prefix('.') {
            Some(parent) => (parent, true),
            None => (name, false),
        };
        if !is_host_name(host) {
            return Err(AllowedDomainError::NotAHost(entry.into()));
        }
        Ok(Self { host: host.to_ascii_lowercase().into(), with_subdomains, ports: port })
    }

    /// Whether `host` (lower case) with `port` (`None`: the scheme's default) is this domain.
    fn admits(&self, host: &str, port: Option<u16>, default_port: u16) -> bool {
        let host_matches = host == &*self.host
            || (self.with_subdomains
                && host
                    .strip_suffix(&*self.host)
                    .and_then(|label| label.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty()));
        let port_matches = match self.ports {
            AllowedPorts::Any => true,
            AllowedPorts::Default => port.is_none_or(|port| port == default_port),
            AllowedPorts::Only(allowed) => port.unwrap_or(default_port) == allowed,
        };
        host_matches && port_matches
    }
}

/// The redirect targets a login may end at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectPolicy {
    domains: Box<[AllowedDomain]>,
    /// Whether `http://` targets are allowed beside `https://` ones.
    allow_http: bool,
}

/// A redirect target that passed [`RedirectPolicy::check`]: safe to send in a `Location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectTarget(Box<str>);

impl RedirectTarget {
    /// The target, as checked.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedirectTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a redirect target was refused. The set is closed, so it can name a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusedRedirect {
    /// No target at all.
    #[error("empty target")]
    Empty,
    /// A character a browser may drop or read as a slash, or one outside printable ASCII.
    #[error("a control character, whitespace, a backslash or a non-ASCII character")]
    UnsafeCharacter,
    /// An escape that may be decoded into such a character on the way.
    #[error("an encoded control character, whitespace, slash or backslash")]
    UnsafeEscape,
    /// Neither a path with one leading `/` nor an absolute URL.
    #[error("a relative target that does not start with a single `/`")]
    NotSingleSlash,
    /// A `.` or `..` path segment.
    #[error("a `.` or `..` path segment")]
    DotSegment,
    /// A scheme that is not allowed.
    #[error("a scheme other than https (or http when allowed)")]
    Scheme,
    /// Userinfo before the host.
    #[error("userinfo (`@`) in the authority")]
    Userinfo,
    /// A host or port that is not plainly written.
    #[error("a host that is not a plain host name")]
    MalformedHost,
    /// A host and port no allowed domain admits.
    #[error("a host or port no allowed domain admits")]
    HostNotAllowed,
}

impl RedirectPolicy {
    /// Targets on the same site, and absolute ones to `domains`; `http://` only with `allow_http`.
    pub fn new(domains: Vec<AllowedDomain>, allow_http: bool) -> Self {
        Self { domains: domains.into(), allow_http }
    }

    /// The target, when a browser may be sent there: a path starting with a single `/`, or an
    /// `https://` URL (`http://` when allowed) whose host and port an allowed domain admits.
    /// `target` is the value as decoded from the query once; whatever would let a browser read
    /// another host into it is refused: a second `/` or a `\` at its start, whitespace and control
    /// characters (which browsers drop, joining what they separate), their encoded forms, `.` and
    /// `..` segments, userinfo, and any character outside printable ASCII.
    pub fn check(&self, target: &str) -> Result<RedirectTarget, RefusedRedirect> {
        if target.is_empty() {
            return Err(RefusedRedirect::Empty);
        }
        if !target.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'\\') {
            return Err(RefusedRedirect::UnsafeCharacter);
        }
        if has_unsafe_escape(target) {
            return Err(RefusedRedirect::UnsafeEscape);
        }
        let path = match target.strip_prefix('/') {
            Some(rest) if rest.starts_with('/') => return Err(RefusedRedirect::NotSingleSlash),
            Some(_) => target,
            None => self.check_absolute(target)?,
        };
        if has_dot_segment(path) {
            return Err(RefusedRedirect::DotSegment);
        }
        Ok(RedirectTarget(target.into()))
    }

    /// Checks an absolute target's scheme and authority; returns what follows the authority.
    fn check_absolute<'t>(&self, target: &'t str) -> Result<&'t str, RefusedRedirect> {
        let (scheme, rest) = target.split_once("://").ok_or(RefusedRedirect::NotSingleSlash)?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "https" => 443,
            "http" if self.allow_http => 80,
            _ => return Err(RefusedRedirect::Scheme),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(RefusedRedirect::Userinfo);
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, written)) => {
                // `parse` accepts `+443` and leading zeros: only the plain form is taken.
                let port = written.parse::<u16>().ok().filter(|port| *port != 0 && port.to_string() == written);
                (host, Some(port.ok_or(RefusedRedirect::MalformedHost)?))
            }
            None => (authority, None),
        };
        if !is_host_name(host) {
            return Err(RefusedRedirect::MalformedHost);
        }
        let host = host.to_ascii_lowercase();
        if self.domains.iter().any(|domain| domain.admits(&host, port, default_port)) {
            Ok(path)
        } else {
            Err(RefusedRedirect::HostNotAllowed)
        }
    }
}

/// Letters, digits and `-` in dot-separated non-empty labels: no IP literal brackets, no
/// trailing dot, no empty label.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

/// An escape a browser or a proxy in between may decode into something that changes where the
/// target points: a control character or space (`%00`-`%20`, `%7f`), a slash or a backslash.
fn has_unsafe_escape(target: &str) -> bool {
    target.split('%').skip(1).any(|after| {
        let escape = after.get(..2).unwrap_or(after).to_ascii_lowercase();
        matches!(escape.as_bytes(), [b'0' | b'1', _] | b"20" | b"7f" | b"2f" | b"5c" | b"2e")
    })
}

/// Whether the path (before any `?` or `#`) has a `.` or `..` segment.
fn has_dot_segment(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| segment == "." || segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        let domains = [".example.com", "app.other.org:8443", "wild.test:*"];
        RedirectPolicy::new(domains.iter().map(|entry| AllowedDomain::parse(entry).unwrap()).collect(), false)
    }

    #[test]
    fn targets_on_the_same_site_and_on_allowed_hosts_are_accepted_as_given() {
        for target in [
            "/",
            "/dashboard?tab=1#top",
            "/a/b.c/d",
            "https://example.com/",
            "https://grafana.example.com",
            "https://a.b.example.com:443/x?rd=//evil",
            "HTTPS://Grafana.Example.COM/x",
            "https://app.other.org:8443/",
            "https://wild.test:9999/x",
            "/search?q=%41",
        ] {
            assert_eq!(policy().check(target).map(|checked| checked.to_string()), Ok(target.to_string()), "{target}");
        }
    }

    /// One row per bypass of oauth2-proxy's open-redirect advisories, and their neighbours.
    #[test]
    fn every_known_open_redirect_bypass_is_refused() {
        use RefusedRedirect::*;
        let rows: &[(&str, &str, RefusedRedirect)] = &[
            ("protocol-relative URL (the original oauth2_proxy open redirect)", "//evil.com", NotSingleSlash),
            ("protocol-relative URL, three slashes", "///evil.com", NotSingleSlash),
            ("GHSA-qqxw-m5fj-f7gv: backslash read as a slash", "/\\evil.com", UnsafeCharacter),
            ("GHSA-qqxw-m5fj-f7gv: two backslashes", "\\\\evil.com", UnsafeCharacter),
            ("GHSA-qqxw-m5fj-f7gv: backslash in an absolute URL", "https://example.com\\@evil.com", UnsafeCharacter),
            ("GHSA-j7px-6hwj-hpjg: tab between the slashes (%09 decoded)", "/\t/evil.com", UnsafeCharacter),
            ("GHSA-j7px-6hwj-hpjg: line feed between the slashes (%0a decoded)", "/\n/evil.com", UnsafeCharacter),
            ("GHSA-j7px-6hwj-hpjg: vertical tab (%0b decoded)", "/\u{b}/evil.com", UnsafeCharacter),
            ("GHSA-j7px-6hwj-hpjg: carriage return (%0d decoded)", "/\r/evil.com", UnsafeCharacter),
            ("GHSA-j7px-6hwj-hpjg: tab still encoded", "/%09/evil.com", UnsafeEscape),
            ("GHSA-j7px-6hwj-hpjg: line feed still encoded", "/%0a/evil.com", UnsafeEscape),
            ("GHSA-j7px-6hwj-hpjg: a space", "/ /evil.com", UnsafeCharacter),
            ("encoded slash after the first", "/%2f/evil.com", UnsafeEscape),
            ("encoded backslash", "/%5cevil.com", UnsafeEscape),
            ("GHSA-5m6c-jp6f-2vcv: dot then backslash", "/.\\evil.com", UnsafeCharacter),
            ("GHSA-5m6c-jp6f-2vcv: dot segment then slash", "/./evil.com", DotSegment),
            ("GHSA-5m6c-jp6f-2vcv: dot-dot segment", "/../evil.com", DotSegment),
            ("GHSA-5m6c-jp6f-2vcv: encoded dot", "/%2e/evil.com", UnsafeEscape),
            ("GHSA-4mf2-f3wh-gvf2: look-alike ending with the suffix", "https://evilexample.com/", HostNotAllowed),
            ("GHSA-4mf2-f3wh-gvf2: look-alike with a dash", "https://evil-example.com/", HostNotAllowed),
            ("allowed domain as a label of another", "https://example.com.evil.com/", HostNotAllowed),
            ("userinfo naming the allowed host", "https://example.com@evil.com/", Userinfo),
            ("userinfo with a password", "https://example.com:443@evil.com/", Userinfo),
            ("userinfo on an allowed host still refused", "https://user@app.example.com/", Userinfo),
            ("http when not allowed", "http://app.example.com/", Scheme),
            ("javascript scheme", "javascript:alert(1)", NotSingleSlash),
            ("javascript scheme with slashes", "javascript://example.com/alert(1)", Scheme),
            ("data scheme", "data://text/html,x", Scheme),
            ("an unlisted host", "https://evil.com/", HostNotAllowed),
            ("a port the domain does not allow", "https://app.example.com:8443/", HostNotAllowed),
            ("a port written with a leading zero", "https://app.other.org:08443/", MalformedHost),
            ("a trailing dot", "https://app.example.com./", MalformedHost),
            ("an IPv6 literal", "https://[::1]/", MalformedHost),
            ("an empty host", "https:///evil.com", MalformedHost),
            ("a bare word (browsers resolve it relative to the callback)", "evil.com", NotSingleSlash),
            ("a non-ASCII look-alike", "https://exаmple.com/", UnsafeCharacter),
            ("a NUL", "/\0/evil.com", UnsafeCharacter),
            ("DEL", "/\u{7f}/evil.com", UnsafeCharacter),
            ("nothing", "", Empty),
        ];
        for (attack, target, refusal) in rows {
            assert_eq!(policy().check(target), Err(*refusal), "{attack}: {target:?}");
        }
    }

    #[test]
    fn http_targets_are_accepted_only_when_allowed_and_on_their_own_default_port() {
        let domains = vec![AllowedDomain::parse(".example.com").unwrap()];
        let with_http = RedirectPolicy::new(domains, true);
        assert!(with_http.check("http://app.example.com/").is_ok());
        assert!(with_http.check("http://app.example.com:80/").is_ok());
        assert_eq!(with_http.check("http://app.example.com:443/"), Err(RefusedRedirect::HostNotAllowed));
        assert_eq!(with_http.check("ftp://app.example.com/"), Err(RefusedRedirect::Scheme));
    }

    #[test]
    fn with_no_allowed_domain_only_paths_on_the_same_site_are_accepted() {
        let same_site = RedirectPolicy::default();
        assert!(same_site.check("/x").is_ok());
        assert_eq!(same_site.check("https://example.com/"), Err(RefusedRedirect::HostNotAllowed));
    }

    #[test]
    fn allowed_domain_entries_are_read_or_refused_by_name() {
        assert!(AllowedDomain::parse("Example.COM").is_ok());
        assert!(AllowedDomain::parse(".example.com:*").is_ok());
        for bad in ["", ".", "..example.com", "exa mple.com", "example.com/", "*.example.com", "[fe80]"] {
            assert_eq!(AllowedDomain::parse(bad), Err(AllowedDomainError::NotAHost(bad.into())), "{bad}");
        }
        for bad in ["example.com:0", "example.com:x", "example.com:70000", "example.com:"] {
            assert_eq!(AllowedDomain::parse(bad), Err(AllowedDomainError::BadPort(bad.into())), "{bad}");
        }
    }
}
