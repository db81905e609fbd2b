//! Value matchers of Istio's policy language — strings, hosts, path templates, addresses; pure, no allocation when matching.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// One Istio string pattern: `*` alone is presence, a leading `*` a suffix, a trailing `*` a
/// prefix; anything else, including a `*` in the middle, is exact. Namespaces alone read every
/// `*` as a wildcard ([`StringMatch::parse_glob`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// The value equals the text.
    Exact(Box<str>),
    /// The value starts with the text (`abc*`).
    Prefix(Box<str>),
    /// The value ends with the text (`*abc`).
    Suffix(Box<str>),
    /// Present and non-empty.
    Presence,
    /// The texts between the `*` of a pattern with a `*` inside it (`team-*-prod`), in order;
    /// each `*` stands for any run of characters, the empty one included.
    Glob(Box<[Box<str>]>),
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

    /// Reads a namespace pattern as Istio does: every `*`, wherever it stands, matches any run
    /// of characters (Istio turns each into `.*` of a regular expression).
    pub fn parse_glob(pattern: &str) -> Self {
        let parts: Vec<&str> = pattern.split('*').collect();
        match parts.as_slice() {
            [_] | ["", ""] | ["", _] | [_, ""] => Self::parse(pattern),
            _ => Self::Glob(parts.into_iter().map(Into::into).collect()),
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == &**exact,
            Self::Prefix(prefix) => value.starts_with(&**prefix),
            Self::Suffix(suffix) => value.ends_with(&**suffix),
            Self::Presence => !value.is_empty(),
            Self::Glob(parts) => glob_matches(parts, value),
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
            // Only namespaces are globs, and they are not matched this way; lower both sides.
            Self::Glob(parts) => {
                let lower: Box<[Box<str>]> = parts.iter().map(|part| part.to_ascii_lowercase().into()).collect();
                String::from_utf8(value.to_ascii_lowercase()).is_ok_and(|value| glob_matches(&lower, &value))
            }
        }
    }
}

/// Whether `value` is the `parts` with any text between them: the first part starts it, the
/// last ends it, and the others follow in order (the leftmost place of each is the best one).
fn glob_matches(parts: &[Box<str>], value: &str) -> bool {
    let [first, middle @ .., last] = parts else {
        return parts.first().is_some_and(|only| value == &**only);
    };
    let Some(rest) = value.strip_prefix(&**first) else {
        return false;
    };
    let Some(end) = rest.len().checked_sub(last.len()) else {
        return false;
    };
    let (Some(mut between), Some(tail)) = (rest.get(..end), rest.get(end..)) else {
        return false;
    };
    if tail != &**last {
        return false;
    }
    for part in middle {
        match between.find(&**part) {
            Some(at) => between = &between[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A path pattern: an Istio string pattern or a path template with `{*}`, `{**}` and named
/// parameters `{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// An exact, prefix, suffix or presence pattern, as on any other string.
    String(StringMatch),
    /// A template whose `{*}` matches one segment and `{**}` any number of them.
    Template(PathTemplate),
}

impl PathMatch {
    /// Reads a `paths` entry as Istio's validation does: a `{` or `}` is only allowed in the
    /// `{*}`, `{**}` and `{name}` of a template.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if PathTemplate::is_template(pattern) {
            PathTemplate::parse(pattern).map(Self::Template)
        } else if pattern.contains(['{', '}']) {
            Err(BRACES.into())
        } else {
            Ok(Self::String(StringMatch::parse(pattern)))
        }
    }

    /// Whether the normalized path matches the pattern.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::String(pattern) => pattern.matches(path),
            Self::Template(template) => template.matches(path),
        }
    }

    /// The template, when the pattern is one.
    pub fn template(&self) -> Option<&PathTemplate> {
        match self {
            Self::String(_) => None,
            Self::Template(template) => Some(template),
        }
    }
}

/// A compiled Istio path template, matched as Envoy's URI template matches it (the whole path):
/// `/`-separated segments, each a literal, `{*}` (one non-empty segment), `{name}` (one
/// non-empty segment, bound to `name`) or `{**}` (any run of segments, the empty one
/// included); at most one `{**}`, after which only literals follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The segments before the `{**}`, or all of them when there is none.
    head: Box<[TemplateSegment]>,
    /// The literal segments after the `{**}`, when there is one.
    after_any: Option<Box<[Box<str>]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    Literal(Box<str>),
    /// `{*}`, or `{name}` with its name.
    OneSegment(Option<Box<str>>),
}

const MATCH_ONE: &str = "{*}";
const MATCH_ANY: &str = "{**}";
const BRACES: &str =
    "`{` and `}` are only allowed in `{*}`, `{**}` and `{name}`, each a whole segment of a path template";
const LAST_OPERATOR: &str = "`{**}` must be the last operator of a path template";

/// The name of a `{name}` segment: a letter or `_`, then letters, digits and `_`.
fn parameter_name(segment: &str) -> Option<&str> {
    let name = segment.strip_prefix('{')?.strip_suffix('}')?;
    let mut characters = name.chars();
    let first = characters.next()?;
    let is_name = (first.is_ascii_alphabetic() || first == '_')
        && characters.all(|character| character.is_ascii_alphanumeric() || character == '_');
    is_name.then_some(name)
}

/// The characters Envoy lets a `{*}` or `{**}` match, besides `/` for `{**}`: RFC 3986's
/// `pchar` (unreserved, percent-encoded, sub-delimiters, `:` and `@`).
fn is_path_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || "-._~%!$&'()*+,;=:@".contains(character)
}

/// A literal segment of a template as Istio's validation allows it (`pchar` without `*`).
fn is_template_literal(segment: &str) -> bool {
    !segment.is_empty() && segment.chars().all(|character| character != '*' && is_path_character(character))
}

impl PathTemplate {
    /// Whether this `paths` entry is a template: Istio's `{*}` or `{**}`, or a `{name}` segment.
    pub fn is_template(pattern: &str) -> bool {
        pattern.contains(MATCH_ONE)
            || pattern.contains(MATCH_ANY)
            || pattern.split('/').any(|segment| parameter_name(segment).is_some())
    }

    /// Compiles a template; refuses what Istio's validation or Envoy's template parser refuses:
    /// an operator that is not a whole segment (`/{*}.txt`, `/{**}.json`), `{name=*}` variables,
    /// `*` globs, an operator after `{**}`, and empty segments other than a final `/`; and a
    /// name that appears twice.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err("a path template must start with `/`".into());
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        let mut head: Vec<TemplateSegment> = Vec::new();
        let mut after_any: Option<Vec<Box<str>>> = None;
        for (index, segment) in segments.into_iter().enumerate() {
            let name = parameter_name(segment);
            let is_operator = segment == MATCH_ONE || segment == MATCH_ANY || name.is_some();
            if is_operator && after_any.is_some() {
                return Err(LAST_OPERATOR.into());
            }
            if segment == MATCH_ANY {
                after_any = Some(Vec::new());
                continue;
            }
            if segment.contains(['{', '}']) && !is_operator {
                return Err(BRACES.into());
            }
            let is_final_slash = segment.is_empty() && index == last;
            if !(is_operator || is_final_slash || is_template_literal(segment)) {
                return Err(format!(
                    "segment `{segment}` of a path template must be `{{*}}`, `{{**}}`, `{{name}}` or a non-empty literal of path characters other than `*`"
                ));
            }
            if let Some(name) = name
                && head.iter().any(|earlier| earlier.name() == Some(name))
            {
                return Err(format!("parameter `{name}` appears twice in the path template"));
            }
            match &mut after_any {
                Some(literals) => literals.push(segment.into()),
                None if segment == MATCH_ONE => head.push(TemplateSegment::OneSegment(None)),
                None if name.is_some() => head.push(TemplateSegment::OneSegment(name.map(Into::into))),
                None => head.push(TemplateSegment::Literal(segment.into())),
            }
        }
        Ok(Self { head: head.into(), after_any: after_any.map(Into::into) })
    }

    /// Whether the path, which must start with `/`, matches the template segment by segment.
    pub fn matches(&self, path: &str) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        let Some(after_any) = &self.after_any else {
            let mut segments = rest.split('/');
            return self.head.iter().all(|segment| segments.next().is_some_and(|text| segment.matches(text)))
                && segments.next().is_none();
        };
        // Before the `{**}`: each segment and its `/`.
        for segment in &self.head {
            let Some((text, after)) = rest.split_once('/') else {
                return false;
            };
            if !segment.matches(text) {
                return false;
            }
            rest = after;
        }
        // After it: `/` and each literal, at the end of the path.
        let tail_length: usize = after_any.iter().map(|literal| 1 + literal.len()).sum();
        let Some((any, mut tail)) = rest.len().checked_sub(tail_length).and_then(|end| rest.split_at_checked(end))
        else {
            return false;
        };
        for literal in after_any.iter() {
            match tail.strip_prefix('/').and_then(|after| after.strip_prefix(&**literal)) {
                Some(after) => tail = after,
                None => return false,
            }
        }
        any.chars().all(|character| character == '/' || is_path_character(character))
    }

    /// The names its `{name}` segments bind, in order.
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        self.head.iter().filter_map(TemplateSegment::name)
    }

    /// The segment of `path` that `{name}` binds, when the template matches the path and
    /// declares `name`; borrowed from the path, nothing allocated.
    pub fn parameter<'p>(&self, name: &str, path: &'p str) -> Option<&'p str> {
        let at = self.head.iter().position(|segment| segment.name() == Some(name))?;
        if !self.matches(path) {
            return None;
        }
        path.strip_prefix('/')?.split('/').nth(at)
    }
}

impl TemplateSegment {
    fn matches(&self, text: &str) -> bool {
        match self {
            Self::Literal(literal) => text == &**literal,
            Self::OneSegment(_) => !text.is_empty() && text.chars().all(is_path_character),
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Self::OneSegment(name) => name.as_deref(),
            Self::Literal(_) => None,
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

    /// Whether the address lies in the block; an IPv4-mapped IPv6 address is read as IPv4.
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
            Self::Glob(parts) => f.write_str(&parts.join("*")),
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(pattern) => pattern.fmt(f),
            Self::Template(template) => template.fmt(f),
        }
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.head.iter() {
            f.write_str("/")?;
            match segment {
                TemplateSegment::Literal(literal) => f.write_str(literal)?,
                TemplateSegment::OneSegment(None) => f.write_str(MATCH_ONE)?,
                TemplateSegment::OneSegment(Some(name)) => write!(f, "{{{name}}}")?,
            }
        }
        if let Some(after_any) = &self.after_any {
            write!(f, "/{MATCH_ANY}")?;
            for literal in after_any.iter() {
                write!(f, "/{literal}")?;
            }
        }
        Ok(())
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

    /// Checks every `(pattern, value, expected)` row of `table` with `matches`.
    fn assert_rows(table: &[(&str, &str, bool)], matches: impl Fn(&str, &str) -> bool) {
        for &(pattern, value, expected) in table {
            assert_eq!(matches(pattern, value), expected, "`{pattern}` vs `{value}`");
        }
    }

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
        assert_rows(table, |pattern, value| StringMatch::parse(pattern).matches(value));
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
        assert_rows(table, |pattern, value| StringMatch::parse(pattern).matches_ignore_case(value));
    }

    #[test]
    fn path_templates_match_whole_paths_as_envoy_uri_templates_do() {
        let table: &[(&str, &str, bool)] = &[
            ("/api/{*}/jobs", "/api/v1/jobs", true),
            ("/api/{*}/jobs", "/api/v1/v2/jobs", false),
            ("/api/{*}/jobs", "/api//jobs", false),
            ("/api/{*}", "/api/v1", true),
            ("/api/{*}", "/api/v1/", false),
            ("/api/{*}", "/api/", false),
            ("/api/{*}/", "/api/v1/", true),
            ("/api/{*}/", "/api/v1", false),
            ("/api/{**}", "/api/", true),
            ("/api/{**}", "/api/a/b/c", true),
            ("/api/{**}", "/api", false),
            ("/{*}/{**}", "/a/b/c", true),
            ("/{**}", "/", true),
            ("/{**}/path/template", "/a/b/path/template", true),
            ("/{**}/path/template", "//path/template", true),
            ("/{**}/path/template", "/path/template", false),
            ("/{**}/path/template", "/a/path/template/x", false),
            ("/foo/{**}/", "/foo/a/b/", true),
            ("/foo/{**}/", "/foo//", true),
            ("/foo/{**}/", "/foo/a/b", false),
            ("/foo/{**}/", "/foo/", false),
            ("/{*}/foo/{**}/bar", "/x/foo/1/2/bar", true),
            ("/{*}/foo/{**}/bar", "/x/foo/bar", false),
            ("/a/{*}", "/a/b=c:d@e*f", true),
            ("/a/{*}", "/a/b%2Fc", true),
            ("/a/{*}", "/a/caf\u{e9}", false),
            ("/a/{**}", "/a/x/\"y\"", false),
            ("/a/{*}", "/a/x y", false),
        ];
        assert_rows(table, |pattern, path| PathTemplate::parse(pattern).expect(pattern).matches(path));
    }

    #[test]
    fn a_named_parameter_matches_as_one_segment_does_and_binds_it() {
        // (template, path, parameter, what it binds); `None` when the template does not match
        // or does not declare the parameter.
        let table: &[(&str, &str, &str, Option<&str>)] = &[
            ("/apps/{app_id}", "/apps/a1", "app_id", Some("a1")),
            ("/apps/{app_id}", "/apps/a1/", "app_id", None),
            ("/apps/{app_id}", "/apps/", "app_id", None),
            ("/apps/{app_id}", "/apps/a1/x", "app_id", None),
            ("/apps/{app_id}", "/apps/a1", "other", None),
            ("/apps/{app_id}", "/apps/a%2Fb", "app_id", Some("a%2Fb")),
            ("/apps/{app_id}", "/apps/caf\u{e9}", "app_id", None),
            ("/apps/{app_id}/", "/apps/a1/", "app_id", Some("a1")),
            ("/{org}/{repo}", "/acme/site", "org", Some("acme")),
            ("/{org}/{repo}", "/acme/site", "repo", Some("site")),
            ("/{org}/{*}/{repo}", "/acme/x/site", "repo", Some("site")),
            ("/{org}/{*}/{repo}", "/acme/site", "repo", None),
            ("/apps/{app_id}/report/{**}", "/apps/a1/report/", "app_id", Some("a1")),
            ("/apps/{app_id}/report/{**}", "/apps/a1/report/2024/q1", "app_id", Some("a1")),
            ("/apps/{app_id}/report/{**}", "/apps/a1/report", "app_id", None),
            ("/apps/{app_id}/{**}/pdf", "/apps/a1/x/y/pdf", "app_id", Some("a1")),
            ("/apps/{app_id}/{**}/pdf", "/apps/a1/x/y/csv", "app_id", None),
            ("/_/{_x9}", "/_/v", "_x9", Some("v")),
        ];
        for &(pattern, path, name, bound) in table {
            let template = PathTemplate::parse(pattern).expect(pattern);
            assert_eq!(template.parameter(name, path), bound, "`{pattern}` `{name}` on `{path}`");
            if template.parameters().any(|declared| declared == name) {
                assert_eq!(template.matches(path), bound.is_some(), "`{pattern}` binds whenever it matches");
            }
            // A named segment matches exactly what `{*}` matches.
            let anonymous: String = pattern
                .split('/')
                .map(|segment| if segment.starts_with('{') && segment != "{**}" { "{*}" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            let anonymous = PathTemplate::parse(&anonymous).expect(pattern);
            assert_eq!(template.matches(path), anonymous.matches(path), "`{pattern}` vs `{path}`");
        }
        let template = PathTemplate::parse("/{org}/{*}/{repo}/{**}").expect("template");
        assert_eq!(template.parameters().collect::<Vec<_>>(), ["org", "repo"]);
        assert!(PathTemplate::is_template("/apps/{app_id}"));
        assert!(!PathTemplate::is_template("/apps/app_id"));
    }

    #[test]
    fn namespace_globs_read_every_star_as_a_wildcard() {
        let table: &[(&str, &str, bool)] = &[
            ("team-*-prod", "team-pay-prod", true),
            ("team-*-prod", "team--prod", true),
            ("team-*-prod", "team-prod", false),
            ("team-*-prod", "team-pay-prod-2", false),
            ("*pay*", "team-pay-prod", true),
            ("*pay*", "team-ops", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("team-*", "team-x", true),
            ("*-prod", "x-prod", true),
            ("*", "x", true),
            ("frontend", "frontend", true),
        ];
        assert_rows(table, |pattern, value| StringMatch::parse_glob(pattern).matches(value));
        assert_eq!(StringMatch::parse_glob("team-*"), StringMatch::Prefix("team-".into()));
        assert_eq!(StringMatch::parse_glob("*pay*").to_string(), "*pay*");
    }

    #[test]
    fn patterns_display_as_written_in_a_policy() {
        for pattern in [
            "/api/jobs",
            "/api/jobs*",
            "*.json",
            "*",
            "/api/{*}/jobs",
            "/{**}/m3u8",
            "/a/{**}/b/",
            "/a/{*}/",
            "/apps/{app_id}/report/{**}",
        ] {
            assert_eq!(PathMatch::parse(pattern).expect(pattern).to_string(), pattern);
        }
        assert_eq!(IpMatch::parse("10.1.2.3/8").expect("cidr").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn path_templates_refuse_what_istio_refuses() {
        for pattern in [
            "/{**}/{*}",
            "/{**}/{**}",
            "/{**}/a/{**}/b",
            "/{}/{*}",
            "/a/*/{*}",
            "/{*}/**",
            "/{name=*}/{*}",
            "api/{*}",
            "/foo/{*}.txt",
            "/{**}.json",
            "/foo/{**}buzz/bar",
            "/{*}/foo/?abc",
            "/{*}//x",
            "/{*}/foo/temp}/bar",
            "/foo/{temp",
            "/foo}",
            "/{**}/{id}",
            "/{id}/{id}",
            "/a/{id}/b/{id}",
            "/{1id}",
            "/{app-id}",
            "/{id}.json",
            "/x{id}",
            "/{ id}",
            "/{id=*}",
        ] {
            assert!(PathMatch::parse(pattern).is_err(), "`{pattern}` should be refused");
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
        assert_rows(table, |block, address| {
            IpMatch::parse(block).expect(block).matches(address.parse::<IpAddr>().expect(address))
        });
        for bad in ["10.0.0/8", "10.0.0.0/33", "abc", "", "1.2.3.4/"] {
            assert!(IpMatch::parse(bad).is_err(), "`{bad}` should be refused");
        }
    }
}
