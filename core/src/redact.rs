//! What of a request may reach a log line or a trace: the values of query parameters that may carry a token, user information and any JWT-shaped text replaced by a marker; pure.

use std::borrow::Cow;

use super::authn::TokenLocation;

/// Written where a secret was. `<` and `>` may not appear unencoded in a URL, so the marker
/// cannot be mistaken for a value the client sent.
pub const MARKER: &str = "<redacted>";

/// Istio's default query parameter for tokens: redacted whatever the policy set names.
const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// The shortest first segment taken for a JWT header: `{"alg":"…"}` is at least 16 characters
/// in base64url; shorter runs starting with `ey` are words, not tokens.
const MIN_JWT_HEADER_CHARS: usize = 16;

/// The query parameters that may carry a token under one policy set, found once when the set is
/// built: `access_token` and every `fromParams` name of every rule.
#[derive(Debug, Clone)]
pub struct LogRedaction {
    /// Each name once, in lower case.
    token_params: Box<[Box<str>]>,
}

impl Default for LogRedaction {
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl LogRedaction {
    /// The redaction for a policy set whose rules look for tokens in `locations`.
    pub fn new<'l>(locations: impl IntoIterator<Item = &'l TokenLocation>) -> Self {
        let mut token_params: Vec<Box<str>> = vec![DEFAULT_TOKEN_PARAM.into()];
        for location in locations {
            if let TokenLocation::Param(name) = location {
                let name: Box<str> = name.to_ascii_lowercase().into();
                if !token_params.contains(&name) {
                    token_params.push(name);
                }
            }
        }
        Self { token_params: token_params.into() }
    }

    /// A request target (path and query) as it may be logged: the value of every query
    /// parameter that may carry a token replaced by [`MARKER`], and JWT-shaped text anywhere
    /// too. A parameter counts whatever the case or percent-encoding of its name, since a
    /// backend may decode it; `;` separates parameters as well as `&`.
    pub fn target<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let redacted = match target.split_once('?') {
            Some((path, rest)) => {
                let (query, fragment) = rest.split_once('#').map_or((rest, None), |(query, end)| (query, Some(end)));
                match self.query(query) {
                    Some(query) => {
                        let fragment = fragment.map(|fragment| format!("#{fragment}")).unwrap_or_default();
                        Cow::Owned(format!("{path}?{query}{fragment}"))
                    }
                    None => Cow::Borrowed(target),
                }
            }
            None => Cow::Borrowed(target),
        };
        match without_jwts(&redacted) {
            Cow::Owned(text) => Cow::Owned(text),
            Cow::Borrowed(_) => redacted,
        }
    }

    /// The query with token values replaced; `None` when it has none.
    fn query(&self, query: &str) -> Option<String> {
        let mut redacted = String::with_capacity(query.len());
        let mut changed = false;
        let mut rest = query;
        loop {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let (pair, after) = rest.split_at(end);
            match pair.split_once('=') {
                Some((name, value)) if !value.is_empty() && self.is_token_param(name) => {
                    redacted.push_str(name);
                    redacted.push('=');
                    redacted.push_str(MARKER);
                    changed = true;
                }
                _ => redacted.push_str(pair),
            }
            let Some(separator) = after.chars().next() else { break };
            redacted.push(separator);
            rest = &after[separator.len_utf8()..];
        }
        changed.then_some(redacted)
    }

    fn is_token_param(&self, raw_name: &str) -> bool {
        let name = percent_decoded(raw_name);
        self.token_params.iter().any(|param| param.as_bytes().eq_ignore_ascii_case(&name))
    }
}

/// An authority (`host:port`) as it may be logged: user information before `@` replaced by
/// [`MARKER`], JWT-shaped text too.
pub fn authority(authority: &str) -> Cow<'_, str> {
    match authority.rsplit_once('@') {
        Some((_, host)) => Cow::Owned(format!("{MARKER}@{}", without_jwts(host))),
        None => without_jwts(authority),
    }
}

/// Text as it may be logged: every JWT-shaped run (`ey…` header, a dot, a payload, a dot,
/// and the rest of its dotted base64url segments) replaced by [`MARKER`].
pub fn without_jwts(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut redacted = String::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find("ey") {
        // No word boundary is asked for: `%20eyJ…` and `id-eyJ…` hide a token as well.
        let start = at + found;
        match jwt_end(bytes, start) {
            Some(end) => {
                redacted.push_str(&text[copied..start]);
                redacted.push_str(MARKER);
                copied = end;
                at = end;
            }
            None => at = start + 2,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    redacted.push_str(&text[copied..]);
    Cow::Owned(redacted)
}

/// Where the JWT starting at `start` ends: a header of at least [`MIN_JWT_HEADER_CHARS`], a
/// non-empty payload, then every further dotted segment (signature, or JWE parts).
fn jwt_end(bytes: &[u8], start: usize) -> Option<usize> {
    let segment_end = |from: usize| from + bytes.iter().skip(from).take_while(|&&byte| is_base64url(byte)).count();
    let header_end = segment_end(start);
    if header_end - start < MIN_JWT_HEADER_CHARS || bytes.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload_end = segment_end(header_end + 1);
    if payload_end == header_end + 1 || bytes.get(payload_end) != Some(&b'.') {
        return None;
    }
    let mut end = segment_end(payload_end + 1);
    while bytes.get(end) == Some(&b'.') {
        end = segment_end(end + 1);
    }
    Some(end)
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// `%XX` escapes decoded; anything else, invalid escapes included, kept as it is.
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                at += 3;
            }
            None => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    fn redaction(params: &[&str]) -> LogRedaction {
        let locations: Vec<TokenLocation> = params.iter().map(|name| TokenLocation::Param((*name).into())).collect();
        LogRedaction::new(&locations)
    }

    #[test]
    fn token_parameters_keep_their_name_and_lose_their_value() {
        let redaction = redaction(&["token"]);
        assert_eq!(
            redaction.target("/a?page=2&access_token=opaque&token=xyz#top"),
            "/a?page=2&access_token=<redacted>&token=<redacted>#top"
        );
        assert_eq!(redaction.target("/a?page=2"), "/a?page=2");
        assert!(
            matches!(redaction.target("/a?page=2&sort=asc"), Cow::Borrowed(_)),
            "nothing to redact, nothing copied"
        );
    }

    #[test]
    fn a_token_parameter_counts_whatever_its_case_encoding_or_separator() {
        let redaction = redaction(&["Session_Key"]);
        for target in
            ["/?ACCESS_TOKEN=s", "/?access%5Ftoken=s", "/?x=1;access_token=s", "/?session_key=s", "/?SESSION%5fKEY=s"]
        {
            let redacted = redaction.target(target);
            assert!(redacted.ends_with("=<redacted>"), "{target} became {redacted}");
        }
        assert_eq!(redaction.target("/?access_tokens=s&my_access_token=t"), "/?access_tokens=s&my_access_token=t");
    }

    #[test]
    fn every_policy_set_redacts_the_default_parameter() {
        assert_eq!(LogRedaction::default().target("/?access_token=s"), "/?access_token=<redacted>");
        assert_eq!(LogRedaction::default().target("/?token=s"), "/?token=s");
    }

    #[test]
    fn jwt_shaped_text_is_redacted_anywhere() {
        let redaction = LogRedaction::default();
        assert_eq!(redaction.target(&format!("/callback/{JWT}/done")), "/callback/<redacted>/done");
        assert_eq!(
            redaction.target(&format!("/?state={JWT}&other={JWT}.more.parts")),
            "/?state=<redacted>&other=<redacted>"
        );
        assert_eq!(without_jwts(&format!("req-{JWT}")), "req-<redacted>");
        assert_eq!(without_jwts(&format!("/?auth=Bearer%20{JWT}")), "/?auth=Bearer%20<redacted>");
    }

    #[test]
    fn words_and_short_dotted_names_are_not_taken_for_tokens() {
        for text in [
            "/survey/they.eye.key",
            "/eyJhbG.eyJ.x",
            "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYSJ9.",
            "/keys/eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYSJ9..sig",
        ] {
            assert_eq!(without_jwts(text), text);
        }
    }

    #[test]
    fn user_information_in_an_authority_is_redacted() {
        assert_eq!(authority("alice:secret@app.test:8443"), "<redacted>@app.test:8443");
        assert_eq!(authority("app.test"), "app.test");
    }
}
