//! Value matchers of Istio's policy language — strings, hosts, path templates, addresses; pure, no allocation when matching.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// One Istio string pattern: `*` alone is presence, a leading `*` a suffix, a trailing `*` a
/// prefix; anything else, including a `*` in the middle, is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Present and non-empty.
    Presence,
}

impl StringMatch {
    /// Reads a pattern as Istio does; a leading `*` wins over a trailing one.
    pub fn parse(pattern: &str) -> Self {
        if pattern == "*" {
            Self::Presence
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            Self::Suffix(suffix.into())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            Self::Prefix(prefix.into())
        } else {
            Self::Exact(pattern.into())
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == &**exact,
            Self::Prefix(prefix) => value.starts_with(&**prefix),
            Self::Suffix(suffix) => value.ends_with(&**suffix),
            Self::Presence => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive match, as Istio matches hosts.
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let value = value.as_bytes();
        match self {
            Self::Exact(exact) => value.eq_ignore_ascii_case(exact.as_bytes()),
            Self::Prefix(prefix) => {
                value.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
            }
            Self::Suffix(suffix) => value
                .len()
                .checked_sub(suffix.len())
                .and_then(|start| value.get(start..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes())),
            Self::Presence => !value.is_empty(),
        }
    }
}

/// A path pattern: an Istio string pattern or a path template with `{*}` and `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    String(StringMatch),
    Template(PathTemplate),
}

impl PathMatch {
    /// Reads a `paths` entry; templates are checked as Istio's validation checks them.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if PathTemplate::is_template(pattern) {
            PathTemplate::parse(pattern).map(Self::Template)
        } else {
            Ok(Self::String(StringMatch::parse(pattern)))
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::String(pattern) => pattern.matches(path),
            Self::Template(template) => template.matches(path),
        }
    }
}

/// A compiled Istio path template: `{*}` matches one non-empty segment, `{**}` zero or more
/// characters across segments and must be the last operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    tokens: Box<[TemplateToken]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateToken {
    Literal(Box<str>),
    OneSegment,
    AnySegments,
}

const MATCH_ONE: &str = "{*}";
const MATCH_ANY: &str = "{**}";
const LAST_OPERATOR: &str = "`{**}` must be the last operator of a path template, in the last segment";

impl PathTemplate {
    /// Whether Istio reads this `paths` entry as a template.
    pub fn is_template(pattern: &str) -> bool {
        pattern.contains(MATCH_ONE) || pattern.contains(MATCH_ANY)
    }

    /// Compiles a template; refuses what Istio refuses (named variables, empty braces, bare
    /// `*` or `**` globs beside a slash) and a `{**}` that is not the last operator.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err("a path template must start with `/`".into());
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while !rest.is_empty() {
            let operator = if let Some(after) = rest.strip_prefix(MATCH_ANY) {
                Some((TemplateToken::AnySegments, after))
            } else {
                rest.strip_prefix(MATCH_ONE).map(|after| (TemplateToken::OneSegment, after))
            };
            if let Some((token, after)) = operator {
                if matches!(tokens.last(), Some(TemplateToken::AnySegments)) {
                    return Err(LAST_OPERATOR.into());
                }
                if !literal.is_empty() {
                    tokens.push(TemplateToken::Literal(std::mem::take(&mut literal).into()));
                }
                tokens.push(token);
                rest = after;
                continue;
            }
            let mut chars = rest.chars();
            let Some(next) = chars.next() else { break };
            if next == '{' || next == '}' {
                return Err(
                    "named variables and empty braces are not supported in path templates; use `{*}` or `{**}`".into(),
                );
            }
            if next == '*' {
                return Err("a path template cannot mix `{*}`/`{**}` with `*` globs".into());
            }
            literal.push(next);
            rest = chars.as_str();
        }
        if !literal.is_empty() {
            if matches!(tokens.last(), Some(TemplateToken::AnySegments)) && literal.contains('/') {
                return Err(LAST_OPERATOR.into());
            }
            tokens.push(TemplateToken::Literal(literal.into()));
        }
        Ok(Self { tokens: tokens.into() })
    }

    pub fn matches(&self, path: &str) -> bool {
        match_tokens(&self.tokens, path)
    }
}

fn match_tokens(tokens: &[TemplateToken], path: &str) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return path.is_empty();
    };
    match first {
        TemplateToken::Literal(literal) => {
            path.strip_prefix(&**literal).is_some_and(|remaining| match_tokens(rest, remaining))
        }
        // By construction only a literal suffix can follow `{**}`.
        TemplateToken::AnySegments => match rest {
            [] => true,
            [TemplateToken::Literal(suffix)] => path.ends_with(&**suffix),
            _ => false,
        },
        TemplateToken::OneSegment => {
            let segment_end = path.find('/').unwrap_or(path.len());
            let must_take_whole_segment = match rest.first() {
                None => true,
                Some(TemplateToken::Literal(next)) => next.starts_with('/'),
                Some(_) => false,
            };
            if must_take_whole_segment {
                return segment_end > 0 && match_tokens(rest, &path[segment_end..]);
            }
            (1..=segment_end).filter(|&end| path.is_char_boundary(end)).any(|end| match_tokens(rest, &path[end..]))
        }
    }
}

/// An address or CIDR block from `ipBlocks`, `remoteIpBlocks` or an `*.ip` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMatch(IpNet);

impl IpMatch {
    /// Reads `10.0.0.1` or `10.0.0.0/8` (IPv6 alike), as Istio's validation does.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.contains('/') {
            value.parse::<IpNet>().map(|net| Self(net.trunc())).map_err(|_| format!("invalid CIDR `{value}`"))
        } else {
            value
                .parse::<IpAddr>()
                .map(|address| Self(IpNet::from(address)))
                .map_err(|_| format!("invalid IP address `{value}`"))
        }
    }

    pub fn matches(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&address)
    }
}

/// Patterns shown as written in a policy, for explanations.
impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => write!(f, "{exact}"),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
            Self::Presence => f.write_str("*"),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(pattern) => pattern.fmt(f),
            Self::Template(template) => template.tokens.iter().try_for_each(|token| match token {
                TemplateToken::Literal(literal) => f.write_str(literal),
                TemplateToken::OneSegment => f.write_str(MATCH_ONE),
                TemplateToken::AnySegments => f.write_str(MATCH_ANY),
            }),
        }
    }
}

impl fmt::Display for IpMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_follow_istio_forms() {
        let table: &[(&str, &str, bool)] = &[
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "", false),
            ("abc*", "abcdef", true),
            ("abc*", "abc", true),
            ("abc*", "xabc", false),
            ("*abc", "xyzabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),
            ("a*c", "a*c", true),
            ("a*c", "abc", false),
            ("*abc*", "xabc*", true),
            ("*abc*", "xabcx", false),
        ];
        for &(pattern, value, expected) in table {
            assert_eq!(StringMatch::parse(pattern).matches(value), expected, "`{pattern}` vs `{value}`");
        }
    }

    #[test]
    fn host_patterns_ignore_ascii_case() {
        let table: &[(&str, &str, bool)] = &[
            ("Example.COM", "example.com", true),
            ("example.com", "example.com:8080", false),
            ("example.com:*", "EXAMPLE.com:8080", true),
            ("*.example.com", "api.EXAMPLE.com", true),
            ("*.example.com", "example.com", false),
            ("*", "", false),
            ("api.*", "API.example.com", true),
            ("é.com", "É.com", false),
        ];
        for &(pattern, value, expected) in table {
            assert_eq!(StringMatch::parse(pattern).matches_ignore_case(value), expected, "`{pattern}` vs `{value}`");
        }
    }

    #[test]
    fn path_templates_match_segments() {
        let table: &[(&str, &str, bool)] = &[
            ("/api/{*}/jobs", "/api/v1/jobs", true),
            ("/api/{*}/jobs", "/api/v1/v2/jobs", false),
            ("/api/{*}/jobs", "/api//jobs", false),
            ("/api/{*}", "/api/v1", true),
            ("/api/{*}", "/api/v1/", false),
            ("/api/{*}", "/api/", false),
            ("/api/{**}", "/api/", true),
            ("/api/{**}", "/api/a/b/c", true),
            ("/api/{**}", "/api", false),
            ("/{**}.m3u8", "/a/b/c.m3u8", true),
            ("/{**}.m3u8", "/a/b/c.mp4", false),
            ("/{*}/{**}", "/a/b/c", true),
            ("/{*}.txt", "/notes.txt", true),
            ("/{*}.txt", "/dir/notes.txt", false),
            ("/{*}.{*}", "/a.b.c", true),
        ];
        for &(pattern, path, expected) in table {
            let template = PathTemplate::parse(pattern).expect(pattern);
            assert_eq!(template.matches(path), expected, "`{pattern}` vs `{path}`");
        }
    }

    #[test]
    fn patterns_display_as_written_in_a_policy() {
        for pattern in ["/api/jobs", "/api/jobs*", "*.json", "*", "/api/{*}/jobs", "/{**}.m3u8"] {
            assert_eq!(PathMatch::parse(pattern).expect(pattern).to_string(), pattern);
        }
        assert_eq!(IpMatch::parse("10.1.2.3/8").expect("cidr").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn path_templates_refuse_what_istio_refuses() {
        for pattern in
            ["/{**}/a", "/{**}/{*}", "/{name}/x/{*}", "/{}/{*}", "/a/*/{*}", "/{*}/**", "/{name=*}/{*}", "api/{*}"]
        {
            assert!(PathTemplate::parse(pattern).is_err(), "`{pattern}` should be refused");
        }
    }

    #[test]
    fn ip_blocks_match_addresses_and_mapped_ipv4() {
        let table: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.1.2.3", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("10.0.0.0/8", "::ffff:10.9.9.9", true),
            ("2001:db8::/32", "2001:db8::1", true),
            ("2001:db8::/32", "10.0.0.1", false),
            ("10.1.2.3/8", "10.200.0.1", true),
        ];
        for &(block, address, expected) in table {
            let matcher = IpMatch::parse(block).expect(block);
            let address: IpAddr = address.parse().expect(address);
            assert_eq!(matcher.matches(address), expected, "`{block}` vs `{address}`");
        }
        for bad in ["10.0.0/8", "10.0.0.0/33", "abc", "", "1.2.3.4/"] {
            assert!(IpMatch::parse(bad).is_err(), "`{bad}` should be refused");
        }
    }
}
