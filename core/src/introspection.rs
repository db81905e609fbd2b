//! Opaque bearer tokens checked by an authorization server's introspection endpoint (RFC 7662): which token a request presents for it, which provider it goes to, and the identity an `active` answer stands for (built here only; `now` is an input); pure.
//!
//! A bearer token shaped as a JWS (three base64url parts) is a JWT and is verified locally by
//! the `RequestAuthentication` rules; any other bearer token goes to one introspection provider
//! and to no other, so a token is never shown to a server that did not issue it. A JWT whose
//! issuer's provider is set to introspect JWTs too is verified locally first, then confirmed by
//! an answer [`confirms_jwt`] reads.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::authn::{Authentication, JwtRule};
use super::id_token::SPACE_DELIMITED;
use super::identity::{ClaimPaths, Identity, IdentitySource, KeyOrigin, Proof, Verifier};
use super::jwt::{JwtError, KeyFingerprint, Lifetime};
use super::request::HttpRequest;

/// The header an opaque token is read from, and the scheme before it.
const HEADER: &str = "authorization";
const SCHEME: &str = "Bearer ";

/// An opaque bearer token a request presents, found but not introspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueToken<'r> {
    /// The token as sent, surrounding blanks removed.
    pub token: &'r str,
    /// The issuer of the provider the token goes to.
    pub issuer: Arc<str>,
}

/// Whether `token` has the shape of a JWS in compact form: three non-empty base64url parts.
pub fn is_jws_shaped(token: &str) -> bool {
    let is_base64url = |part: &str| {
        !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|part| is_base64url(part))
}

/// The opaque token a request presents in `Authorization: Bearer`, and its provider: the first
/// of `issuers` (the configured providers, in order) that an applicable JWT rule names, else the
/// first one. `None` when no provider is configured, the request sends no bearer token, or every
/// one it sends is shaped as a JWS. Several tokens, one of them opaque, give an empty token,
/// which no provider is asked about.
pub fn find_opaque_token<'r>(
    issuers: &[Arc<str>],
    rules: &[&Arc<JwtRule>],
    http: &HttpRequest<'r>,
) -> Option<OpaqueToken<'r>> {
    let first = issuers.first()?;
    let values = http.header_values(HEADER).filter_map(|value| value.strip_prefix(SCHEME));
    let tokens: Vec<&str> = values.map(|token| token.trim_matches([' ', '\t'])).collect();
    if tokens.iter().all(|token| is_jws_shaped(token)) {
        return None;
    }
    // Several bearer tokens, one of them opaque: the provider is given none, and the request is
    // refused.
    let token = match tokens.as_slice() {
        [token] => *token,
        _ => "",
    };
    let named = issuers.iter().find(|issuer| rules.iter().any(|rule| rule.issuer.as_deref() == Some(&***issuer)));
    Some(OpaqueToken { token, issuer: named.unwrap_or(first).clone() })
}

/// The caller an introspection answer (RFC 7662 section 2.2) stands for at `now`, keeping the
/// claims `kept` names: `active: true` with no `iss` or `issuer`'s own, and an `exp` still ahead.
/// The subject is `sub`, or `client_id` for a token a client holds for itself (no `sub`);
/// `scope` splits on spaces, and every other member is a claim. `active: false` is refused as
/// not active; anything else (not an object, `active` missing or not a boolean, another
/// issuer, members of the wrong type) as a failed introspection.
pub fn identity_from_answer(
    answer: &Value,
    issuer: &Arc<str>,
    kept: &Arc<ClaimPaths>,
    now: u64,
) -> Authentication<'static> {
    let failed = |error| Authentication::Failed { error };
    let Some(members) = answer.as_object() else { return failed(JwtError::IntrospectionFailed) };
    match members.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return failed(JwtError::TokenInactive),
        _ => return failed(JwtError::IntrospectionFailed),
    }
    let mut claims: Map<String, Value> = members.clone();
    claims.remove("active");
    match claims.get("iss") {
        None => {}
        Some(Value::String(said)) if **said == **issuer => {}
        Some(_) => return failed(JwtError::IntrospectionFailed),
    }
    claims.insert("iss".into(), Value::String(issuer.to_string()));
    let subject = match (claims.get("sub"), claims.get("client_id")) {
        (Some(Value::String(sub)), _) => sub.clone(),
        (None, Some(Value::String(client))) => client.clone(),
        (None, None) => String::new(),
        _ => return failed(JwtError::IntrospectionFailed),
    };
    claims.insert("sub".into(), Value::String(subject));
    let lifetime = match Lifetime::of(&claims) {
        Ok(lifetime) => lifetime,
        Err(_) => return failed(JwtError::IntrospectionFailed),
    };
    if let Err(error) = lifetime.check(now, 0) {
        return failed(if error == JwtError::Expired { JwtError::TokenInactive } else { error });
    }
    let verifier = Arc::new(Verifier {
        issuer: Some(issuer.clone()),
        keys: KeyOrigin::Remote,
        kept: kept.clone(),
        space_delimited: SPACE_DELIMITED.iter().map(|name| Box::from(*name)).collect(),
    });
    let proof = Proof { lifetime, kid: None, key: KeyFingerprint::default(), source: IdentitySource::Introspection };
    Authentication::Introspected { identity: Arc::new(Identity::from_verified_claims(&claims, &verifier, proof)) }
}

/// Whether an introspection answer confirms a JWT verified locally, whose subject is `subject`:
/// the answer must stand for a caller (as [`identity_from_answer`] reads it), and a `sub` it
/// names must be the token's. `active: false` (a provider that ended the token's session early,
/// as Keycloak does on logout) refuses it as not active; anything unreadable as a failed
/// introspection.
pub fn confirms_jwt(answer: &Value, issuer: &Arc<str>, subject: &str, now: u64) -> Result<(), JwtError> {
    if let Authentication::Failed { error } = identity_from_answer(answer, issuer, &Arc::default(), now) {
        return Err(error);
    }
    match answer.get("sub") {
        Some(Value::String(said)) if said != subject => Err(JwtError::IntrospectionFailed),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const ISSUER: &str = "https://idp.example";

    fn kept(names: &[&str]) -> Arc<ClaimPaths> {
        Arc::new(ClaimPaths::new(names.iter().map(|name| Box::from([Box::from(*name)])), false))
    }

    fn principal_or_error(answer: &Value) -> Result<String, JwtError> {
        match identity_from_answer(answer, &Arc::from(ISSUER), &kept(&[]), NOW) {
            Authentication::Introspected { identity } => Ok(format!("{}/{}", identity.issuer(), identity.subject())),
            Authentication::Failed { error } => Err(error),
            other => panic!("not an introspection's outcome: {other:?}"),
        }
    }

    #[test]
    fn an_answer_becomes_a_caller_only_when_active_of_its_issuer_and_unexpired() {
        let rows: Vec<(&str, Value, Result<&str, JwtError>)> = vec![
            ("active with a subject", json!({"active": true, "sub": "alice"}), Ok("https://idp.example/alice")),
            ("its issuer said", json!({"active": true, "sub": "a", "iss": ISSUER}), Ok("https://idp.example/a")),
            ("a client's own token", json!({"active": true, "client_id": "ci"}), Ok("https://idp.example/ci")),
            (
                "the subject before the client",
                json!({"active": true, "sub": "a", "client_id": "c"}),
                Ok("https://idp.example/a"),
            ),
            ("an exp ahead", json!({"active": true, "sub": "a", "exp": NOW + 1}), Ok("https://idp.example/a")),
            ("inactive", json!({"active": false}), Err(JwtError::TokenInactive)),
            ("inactive with claims", json!({"active": false, "sub": "a"}), Err(JwtError::TokenInactive)),
            ("an exp reached", json!({"active": true, "sub": "a", "exp": NOW}), Err(JwtError::TokenInactive)),
            ("an nbf ahead", json!({"active": true, "sub": "a", "nbf": NOW + 10}), Err(JwtError::NotYetValid)),
            (
                "another issuer",
                json!({"active": true, "sub": "a", "iss": "https://evil"}),
                Err(JwtError::IntrospectionFailed),
            ),
            ("active as text", json!({"active": "true", "sub": "a"}), Err(JwtError::IntrospectionFailed)),
            ("no active member", json!({"sub": "a"}), Err(JwtError::IntrospectionFailed)),
            ("a subject not text", json!({"active": true, "sub": 7}), Err(JwtError::IntrospectionFailed)),
            (
                "an exp not a number",
                json!({"active": true, "sub": "a", "exp": "soon"}),
                Err(JwtError::IntrospectionFailed),
            ),
            ("not an object", json!(["active", true]), Err(JwtError::IntrospectionFailed)),
            ("null", Value::Null, Err(JwtError::IntrospectionFailed)),
        ];
        for (case, answer, expected) in rows {
            assert_eq!(principal_or_error(&answer).as_deref().map_err(|error| *error), expected, "{case}");
        }
    }

    #[test]
    fn an_active_answer_offers_scope_client_audience_and_other_members_as_claims() {
        let answer = json!({
            "active": true, "sub": "alice", "scope": "svc-a:read svc-b:write", "client_id": "web",
            "aud": ["svc-a"], "exp": NOW + 60, "tenant": "acme"
        });
        let kept = kept(&["scope", "client_id", "aud", "tenant", "active"]);
        let Authentication::Introspected { identity } = identity_from_answer(&answer, &Arc::from(ISSUER), &kept, NOW)
        else {
            panic!("the answer is active")
        };
        assert_eq!(identity.source(), IdentitySource::Introspection);
        assert_eq!(identity.claim_values(&["scope"]).collect::<Vec<_>>(), ["svc-a:read", "svc-b:write"]);
        assert_eq!(identity.header_value(&["client_id"]), Some("web"));
        assert!(identity.has_audience(&[Box::from("svc-a")]));
        assert_eq!(identity.header_value(&["tenant"]), Some("acme"));
        assert_eq!(identity.header_value(&["active"]), None, "`active` is the answer's, no claim");
        assert_eq!(identity.expires_at(), Some((NOW + 60) as f64));
    }

    #[test]
    fn a_jwt_is_confirmed_only_by_an_active_answer_naming_its_subject_or_none() {
        let rows: Vec<(&str, Value, Result<(), JwtError>)> = vec![
            ("active, its subject", json!({"active": true, "sub": "alice", "iss": ISSUER}), Ok(())),
            ("active, no subject said", json!({"active": true}), Ok(())),
            ("its session ended", json!({"active": false}), Err(JwtError::TokenInactive)),
            ("another subject", json!({"active": true, "sub": "mallory"}), Err(JwtError::IntrospectionFailed)),
            ("another issuer", json!({"active": true, "iss": "https://evil"}), Err(JwtError::IntrospectionFailed)),
            ("an exp reached", json!({"active": true, "exp": NOW}), Err(JwtError::TokenInactive)),
            ("not an answer", json!({"error": "unsupported_token_type"}), Err(JwtError::IntrospectionFailed)),
        ];
        for (case, answer, expected) in rows {
            assert_eq!(confirms_jwt(&answer, &Arc::from(ISSUER), "alice", NOW), expected, "{case}");
        }
    }

    /// A request's headers, as a table row gives them.
    type Headers = &'static [(&'static str, &'static str)];

    fn http(headers: Headers) -> HttpRequest<'static> {
        HttpRequest { headers: headers.to_vec(), ..HttpRequest::default() }
    }

    #[test]
    fn only_a_bearer_token_not_shaped_as_a_jws_goes_to_introspection() {
        let issuers: Vec<Arc<str>> = vec![ISSUER.into()];
        let rows: &[(&str, Headers, Option<&str>)] = &[
            ("an opaque token", &[("authorization", "Bearer 2YotnFZFEjr1zCsicMWpAA")], Some("2YotnFZFEjr1zCsicMWpAA")),
            ("a token with one dot", &[("authorization", "Bearer abc.def")], Some("abc.def")),
            ("a JWS", &[("authorization", "Bearer eyJh.eyJz.c2ln")], None),
            ("four parts", &[("authorization", "Bearer a.b.c.d")], Some("a.b.c.d")),
            ("an empty JWS part", &[("authorization", "Bearer a..c")], Some("a..c")),
            ("another scheme", &[("authorization", "APIKey k")], None),
            ("no header", &[], None),
            ("two bearer tokens", &[("authorization", "Bearer a"), ("authorization", "Bearer b")], Some("")),
            (
                "a JWS and an opaque token",
                &[("authorization", "Bearer a.b.c"), ("authorization", "Bearer b")],
                Some(""),
            ),
            ("two JWS", &[("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")], None),
        ];
        for (case, headers, expected) in rows {
            let found = find_opaque_token(&issuers, &[], &http(headers));
            assert_eq!(found.map(|token| token.token), *expected, "{case}");
        }
        assert_eq!(find_opaque_token(&[], &[], &http(&[("authorization", "Bearer opaque")])), None, "no provider");
    }
}
