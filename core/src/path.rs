//! Request-path normalization before matching — query removal, safe percent-decoding, slashes and dot segments; pure.

use std::borrow::Cow;

/// How paths are normalized; the defaults are Istio's `BASE` normalization plus slash merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Merge runs of `/` into one, as Istio's `MERGE_SLASHES` does.
    pub merge_slashes: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self { merge_slashes: true }
    }
}

/// Why a path cannot be normalized safely; such a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not starting with `/`.
    #[error("path does not start with `/`")]
    NotAbsolute,
    /// A `%00`.
    #[error("path contains an encoded NUL byte")]
    EncodedNul,
    /// A `%` without two hex digits.
    #[error("path contains a `%` not followed by two hex digits")]
    BadPercentEncoding,
    /// A raw control character.
    #[error("path contains a control character")]
    ControlCharacter,
    /// A `.` or `..` segment with `;` parameters, which some servers read as the dot segment.
    #[error("path contains a dot segment with parameters (`..;`)")]
    DotSegmentWithParameters,
}

/// A normalized path, and the other readings a backend may give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// The path as matched: `%2F` and `%5C` stay encoded, `;` parameters stay.
    pub path: Cow<'a, str>,
    /// Other readings, each different from `path`: `%2F` and `%5C` decoded to `/`, and `;`
    /// parameters dropped from every segment (as Tomcat and Spring do). A request must be
    /// allowed under every reading.
    pub other_readings: Vec<String>,
}

/// Normalizes the path part of a request target: drops the query and fragment, decodes
/// percent-encoded unreserved characters, turns `\` into `/`, optionally merges slashes and
/// removes `.` and `..` segments.
pub fn normalize(raw: &str, options: PathOptions) -> Result<NormalizedPath<'_>, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_already_normal(path, options) {
        return Ok(NormalizedPath { path: Cow::Borrowed(path), other_readings: Vec::new() });
    }
    let (decoded, has_encoded_slash) = decode_unreserved(path)?;
    let normal = remove_dot_segments(&decoded, options)?;
    let mut readings = vec![normal.clone()];
    if has_encoded_slash {
        readings.push(remove_dot_segments(&decode_slashes(&normal), options)?);
    }
    if normal.contains(';') {
        for reading in readings.clone() {
            readings.push(remove_dot_segments(&drop_parameters(&reading), options)?);
        }
    }
    let mut other_readings: Vec<String> = Vec::new();
    for reading in readings.into_iter().skip(1) {
        if reading != normal && !other_readings.contains(&reading) {
            other_readings.push(reading);
        }
    }
    Ok(NormalizedPath { path: Cow::Owned(normal), other_readings })
}

/// `/a;x/b;y=1` read as `/a/b`: the `;` parameters of every segment dropped.
fn drop_parameters(path: &str) -> String {
    path.split('/').map(|segment| segment.split(';').next().unwrap_or_default()).collect::<Vec<_>>().join("/")
}

/// The common case costs one scan and no allocation.
fn is_already_normal(path: &str, options: PathOptions) -> bool {
    let bytes = path.as_bytes();
    let has_special_byte = bytes.iter().any(|&b| b == b'%' || b == b'\\' || b == b';' || b < 0x20 || b == 0x7f);
    let has_dot_segment = path.contains("/.");
    let has_double_slash = options.merge_slashes && path.contains("//");
    !(has_special_byte || has_dot_segment || has_double_slash)
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` of unreserved characters, upper-cases the hex of the others and maps `\` to
/// `/`; reports whether an encoded `/` or `\` stays.
fn decode_unreserved(path: &str) -> Result<(String, bool), PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut has_encoded_slash = false;
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let value = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(PathError::BadPercentEncoding)?;
                if value == 0 {
                    return Err(PathError::EncodedNul);
                }
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    has_encoded_slash |= value == b'/' || value == b'\\';
                    out.push('%');
                    out.push_str(&format!("{value:02X}"));
                }
                index += 3;
            }
            b'\\' => {
                out.push('/');
                index += 1;
            }
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                // Copy the whole UTF-8 character that starts here.
                let rest = &path[index..];
                let next = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&rest[..next]);
                index += next;
            }
        }
    }
    Ok((out, has_encoded_slash))
}

fn decode_slashes(path: &str) -> String {
    path.replace("%2F", "/").replace("%5C", "/")
}

/// RFC 3986 section 5.2.4 on a path that starts with `/`, with optional slash merging.
fn remove_dot_segments(path: &str, options: PathOptions) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_in_directory = false;
    for segment in path[1..].split('/') {
        ends_in_directory = false;
        let name = segment.split(';').next().unwrap_or_default();
        if name != segment && (name == "." || name == "..") {
            return Err(PathError::DotSegmentWithParameters);
        }
        match segment {
            "." => ends_in_directory = true,
            ".." => {
                segments.pop();
                ends_in_directory = true;
            }
            "" if options.merge_slashes => ends_in_directory = true,
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_directory || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(raw: &str) -> Result<String, PathError> {
        normalize(raw, PathOptions::default()).map(|n| n.path.into_owned())
    }

    #[test]
    fn normalizes_paths_as_documented() {
        let table: &[(&str, &str)] = &[
            ("/", "/"),
            ("/api/jobs", "/api/jobs"),
            ("/api/jobs?x=1&y=/..", "/api/jobs"),
            ("/api/jobs#frag", "/api/jobs"),
            ("/api/jobs/../jobcategories", "/api/jobcategories"),
            ("/api/jobs/./list", "/api/jobs/list"),
            ("/api/jobs/..", "/api/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api//jobs", "/api/jobs"),
            ("//api///jobs//", "/api/jobs/"),
            ("/api\\jobs", "/api/jobs"),
            ("/api/jobs\\..\\..\\debug", "/debug"),
            ("/api/%6aobs", "/api/jobs"),
            ("/api/jobs/%2e%2e/debug", "/api/debug"),
            ("/api/jobs/%2E%2E/%2e/debug", "/api/debug"),
            ("/a%20b", "/a%20b"),
            ("/a%2fb", "/a%2Fb"),
            ("/caf\u{e9}/..", "/"),
            ("/api/jobs/.hidden", "/api/jobs/.hidden"),
            ("/api/jobs/...", "/api/jobs/..."),
            ("/a;b", "/a;b"),
        ];
        for &(raw, expected) in table {
            assert_eq!(normal(raw).as_deref(), Ok(expected), "normalizing `{raw}`");
        }
    }

    #[test]
    fn keeps_repeated_slashes_when_merging_is_off() {
        let options = PathOptions { merge_slashes: false };
        let normalized = normalize("/a//b/../c", options).expect("valid");
        assert_eq!(normalized.path, "/a//c");
    }

    #[test]
    fn refuses_paths_it_cannot_normalize_safely() {
        let table: &[(&str, PathError)] = &[
            ("/a%00b", PathError::EncodedNul),
            ("/a%0", PathError::BadPercentEncoding),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("/a\u{0}b", PathError::ControlCharacter),
            ("/a\nb", PathError::ControlCharacter),
            ("api/jobs", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/api/jobs/..;/debug", PathError::DotSegmentWithParameters),
            ("/api/.;x/debug", PathError::DotSegmentWithParameters),
        ];
        for &(raw, expected) in table {
            assert_eq!(normal(raw), Err(expected), "normalizing `{raw}`");
        }
    }

    #[test]
    fn offers_the_decoded_slash_reading_only_when_it_differs() {
        let normalized = normalize("/api/jobs/..%2F..%2Fdebug", PathOptions::default()).expect("valid");
        assert_eq!(normalized.path, "/api/jobs/..%2F..%2Fdebug");
        assert_eq!(normalized.other_readings, ["/debug"]);
        let plain = normalize("/api/jobs", PathOptions::default()).expect("valid");
        assert!(plain.other_readings.is_empty());
        let backslash = normalize("/files/a%5cb", PathOptions::default()).expect("valid");
        assert_eq!(backslash.other_readings, ["/files/a/b"]);
        let parameters = normalize("/admin;jsessionid=1/users;x", PathOptions::default()).expect("valid");
        assert_eq!(parameters.path, "/admin;jsessionid=1/users;x");
        assert_eq!(parameters.other_readings, ["/admin/users"]);
    }

    #[test]
    fn normalization_is_idempotent() {
        for raw in ["/a/./b/../c//d", "/%2e%2e/x", "/a%2Fb/..", "/x\\y/../z", "/caf\u{e9}"] {
            let once = normal(raw).expect("valid");
            assert_eq!(normal(&once).as_deref(), Ok(once.as_str()), "normalizing `{raw}` twice");
        }
    }
}
