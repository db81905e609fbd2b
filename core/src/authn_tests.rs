//! Token tests with real signatures: keys from `tests/keys/`, tokens signed here, every refusal named.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::authn::{self, Authentication, AuthnContext, JwtRule, KeySource, NoRemoteKeys, TokenLocation};
use super::identity::{ClaimPaths, Identity, IdentitySource};
use super::jwt::{JwtError, KeySet};
use super::request::HttpRequest;
use super::test_util::{ISSUER, NOW, bearer, claims, jwks, request_with, rule, sign};

fn with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// The usual claims with `name` set to JSON `null`.
fn with_null(name: &str) -> Value {
    let mut claims = claims();
    claims[name] = Value::Null;
    claims
}

fn context() -> AuthnContext<'static> {
    AuthnContext { keys: &NoRemoteKeys, now: NOW, clock_skew_secs: 60, max_token_bytes: 8192 }
}

fn outcome(rule: &Arc<JwtRule>, headers: &[(String, String)], path: &str) -> Result<String, JwtError> {
    let http = HttpRequest {
        path,
        headers: headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
        ..HttpRequest::default()
    };
    subject_of(&authn::authenticate(&[rule], &http, &context()))
}

/// The caller's subject, "anonymous" without a token, or the refusal.
fn subject_of(authentication: &Authentication<'_>) -> Result<String, JwtError> {
    Ok(authentication.caller()?.map_or_else(|| "anonymous".into(), |identity| identity.subject().to_string()))
}

fn alg_none_token() -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    format!("{header}.{payload}.")
}

fn hs256_with_public_key() -> String {
    // The classic key confusion: HMAC keyed with the RSA public key the JWKS publishes.
    let public = jwks(&[("rsa-2048.pem", Algorithm::RS256, "rsa")]);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".into());
    jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(public.as_bytes())).expect("signs")
}

fn tampered(token: &str, transform: impl Fn(&str) -> String) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", transform(parts[0]), parts[1], parts[2])
}

#[test]
fn tokens_are_verified_or_refused_with_envoys_reason() {
    let rsa = |claims: &Value| sign("rsa-2048.pem", Algorithm::RS256, "rsa", claims);
    let valid = rsa(&claims());
    let header_with = |extra: Value| {
        tampered(&valid, |header| {
            let mut json: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
            for (name, value) in extra.as_object().expect("object") {
                json[name] = value.clone();
            }
            URL_SAFE_NO_PAD.encode(json.to_string())
        })
    };
    // Envoy's jwt_verify_lib refuses a registered claim of the wrong type while parsing: the
    // rows name its status; the body is `Jwt verification fails`.
    let refused = Err(JwtError::VerificationFails);
    let cases: Vec<(&str, String, Result<&str, JwtError>)> = vec![
        ("RS256 verifies", valid.clone(), Ok("alice")),
        ("ES256 verifies", sign("ec-p256.pem", Algorithm::ES256, "ec", &claims()), Ok("alice")),
        ("EdDSA verifies", sign("ed25519.pem", Algorithm::EdDSA, "ed", &claims()), Ok("alice")),
        (
            "PS256 under a key pinned to RS256",
            sign("rsa-2048.pem", Algorithm::PS256, "rsa", &claims()),
            Err(JwtError::KeyNotFound),
        ),
        ("expired", rsa(&with(json!({"exp": NOW - 120}))), Err(JwtError::Expired)),
        ("expired within the clock skew", rsa(&with(json!({"exp": NOW - 30}))), Ok("alice")),
        ("not yet valid", rsa(&with(json!({"nbf": NOW + 120}))), Err(JwtError::NotYetValid)),
        ("nbf within the clock skew", rsa(&with(json!({"nbf": NOW + 30}))), Ok("alice")),
        ("exp as a string", rsa(&with(json!({"exp": "1900000000"}))), Err(JwtError::VerificationFails)),
        ("exp as a float", rsa(&with(json!({"exp": (NOW + 300) as f64 + 0.5}))), Ok("alice")),
        ("exp under 2^64", rsa(&with(json!({"exp": 1.8e19}))), Ok("alice")),
        ("exp at 2^64: JwtPayloadParseErrorExpOutOfRange", rsa(&with(json!({"exp": 1.8446744073709552e19}))), refused),
        ("exp huge: JwtPayloadParseErrorExpOutOfRange", rsa(&with(json!({"exp": 1e300}))), refused),
        ("exp negative: JwtPayloadParseErrorExpOutOfRange", rsa(&with(json!({"exp": -5}))), refused),
        ("exp null: JwtPayloadParseErrorExpNotInteger", rsa(&with_null("exp")), refused),
        ("nbf as a string: JwtPayloadParseErrorNbfNotInteger", rsa(&with(json!({"nbf": "0"}))), refused),
        ("nbf negative: JwtPayloadParseErrorNbfOutOfRange", rsa(&with(json!({"nbf": -1}))), refused),
        ("nbf as a float", rsa(&with(json!({"nbf": NOW as f64 - 0.5}))), Ok("alice")),
        ("iat as a float", rsa(&with(json!({"iat": NOW as f64 + 0.25}))), Ok("alice")),
        ("iat 0", rsa(&with(json!({"iat": 0}))), Ok("alice")),
        ("iat -0.0", rsa(&with(json!({"iat": -0.0}))), Ok("alice")),
        ("iat in the future is not checked", rsa(&with(json!({"iat": NOW + 86_400}))), Ok("alice")),
        ("iat as a string: JwtPayloadParseErrorIatNotInteger", rsa(&with(json!({"iat": "1800000000"}))), refused),
        ("iat as a boolean: JwtPayloadParseErrorIatNotInteger", rsa(&with(json!({"iat": true}))), refused),
        ("iat null: JwtPayloadParseErrorIatNotInteger", rsa(&with_null("iat")), refused),
        ("iat negative: JwtPayloadParseErrorIatOutOfRange", rsa(&with(json!({"iat": -1}))), refused),
        ("iat at 2^64: JwtPayloadParseErrorIatOutOfRange", rsa(&with(json!({"iat": 1.8446744073709552e19}))), refused),
        ("jti as a string", rsa(&with(json!({"jti": "a1b2"}))), Ok("alice")),
        ("jti empty", rsa(&with(json!({"jti": ""}))), Ok("alice")),
        ("jti as a number: JwtPayloadParseErrorJtiNotString", rsa(&with(json!({"jti": 7}))), refused),
        ("jti as a list: JwtPayloadParseErrorJtiNotString", rsa(&with(json!({"jti": ["a"]}))), refused),
        ("jti null: JwtPayloadParseErrorJtiNotString", rsa(&with_null("jti")), refused),
        ("sub empty", rsa(&with(json!({"sub": ""}))), Ok("")),
        ("no sub", rsa(&with(json!({"sub": null}))), Ok("")),
        ("sub as a number: JwtPayloadParseErrorSubNotString", rsa(&with(json!({"sub": 42}))), refused),
        ("sub as an object: JwtPayloadParseErrorSubNotString", rsa(&with(json!({"sub": {"id": "alice"}}))), refused),
        ("sub null: JwtPayloadParseErrorSubNotString", rsa(&with_null("sub")), refused),
        ("iss as a number: JwtPayloadParseErrorIssNotString", rsa(&with(json!({"iss": 7}))), refused),
        ("iss as a list: JwtPayloadParseErrorIssNotString", rsa(&with(json!({"iss": [ISSUER]}))), refused),
        ("iss null: JwtPayloadParseErrorIssNotString", rsa(&with_null("iss")), refused),
        ("aud empty", rsa(&with(json!({"aud": ""}))), Ok("alice")),
        ("aud an empty list", rsa(&with(json!({"aud": []}))), Ok("alice")),
        ("aud as a number: JwtPayloadParseErrorAudNotString", rsa(&with(json!({"aud": 7}))), refused),
        ("aud a list with a number: JwtPayloadParseErrorAudNotString", rsa(&with(json!({"aud": ["a", 7]}))), refused),
        ("aud a nested list: JwtPayloadParseErrorAudNotString", rsa(&with(json!({"aud": [["a"]]}))), refused),
        ("aud as an object: JwtPayloadParseErrorAudNotString", rsa(&with(json!({"aud": {"a": "b"}}))), refused),
        ("aud null: JwtPayloadParseErrorAudNotString", rsa(&with_null("aud")), refused),
        ("a type error wins over an unknown issuer", rsa(&with(json!({"iss": "https://evil", "jti": 1}))), refused),
        ("another issuer", rsa(&with(json!({"iss": "https://evil.example"}))), Err(JwtError::UnknownIssuer)),
        ("no issuer", rsa(&with(json!({"iss": null}))), Err(JwtError::UnknownIssuer)),
        (
            "signed by another key under the same kid",
            sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims()),
            Err(JwtError::VerificationFails),
        ),
        ("an unknown kid", sign("rsa-2048.pem", Algorithm::RS256, "rotated", &claims()), Err(JwtError::KeyNotFound)),
        (
            "an RSA kid with an EC alg",
            sign("ec-p256.pem", Algorithm::ES256, "rsa", &claims()),
            Err(JwtError::KeyNotFound),
        ),
        ("alg none without a signature", alg_none_token(), Err(JwtError::BadFormat)),
        ("alg none with a signature", format!("{}c2ln", alg_none_token()), Err(JwtError::VerificationFails)),
        ("HS256 keyed with the public key", hs256_with_public_key(), Err(JwtError::VerificationFails)),
        ("a crit header", header_with(json!({"crit": ["exp"]})), Err(JwtError::VerificationFails)),
        (
            "a jku header is ignored, not fetched",
            header_with(json!({"jku": "http://169.254.169.254/keys"})),
            Err(JwtError::VerificationFails),
        ),
        ("two parts", valid.rsplit_once('.').map_or("", |(head, _)| head).to_string(), Err(JwtError::BadFormat)),
        ("five parts (JWE)", format!("{valid}.a.b"), Err(JwtError::BadFormat)),
        (
            "an empty signature",
            format!("{}.", valid.rsplit_once('.').map_or("", |(head, _)| head)),
            Err(JwtError::BadFormat),
        ),
        ("base64 padding", tampered(&valid, |header| format!("{header}==")), Err(JwtError::VerificationFails)),
        ("not base64url", tampered(&valid, |header| format!("{header}*")), Err(JwtError::VerificationFails)),
        ("over the size limit", format!("{valid}{}", "A".repeat(9000)), Err(JwtError::VerificationFails)),
    ];
    let rule = rule(&[]);
    let mut failures = Vec::new();
    for (name, token, expected) in cases {
        let got = outcome(&rule, &[bearer(&token)], "/");
        if got.as_deref().map_err(|error| *error) != expected {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn audiences_must_match_when_the_rule_names_them() {
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let single = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &with(json!({"aud": "jobs-api"})));
    let numeric = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &with(json!({"aud": 7})));
    let nested = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &with(json!({"aud": [["jobs-api"]]})));
    assert_eq!(outcome(&rule(&["jobs-api"]), &[bearer(&token)], "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&rule(&["jobs-api"]), &[bearer(&single)], "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&rule(&["billing"]), &[bearer(&token)], "/"), Err(JwtError::AudienceNotAllowed));
    // An `aud` that is neither a string nor a list of strings is malformed, as in Envoy.
    assert_eq!(outcome(&rule(&["7"]), &[bearer(&numeric)], "/"), Err(JwtError::VerificationFails));
    assert_eq!(outcome(&rule(&["jobs-api"]), &[bearer(&nested)], "/"), Err(JwtError::VerificationFails));
}

#[test]
fn an_identity_verified_from_a_token_says_it_came_from_a_jwt() {
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let (name, value) = bearer(&token);
    let http = HttpRequest { headers: vec![(name.as_str(), value.as_str())], ..HttpRequest::default() };
    let rule = rule(&[]);
    let Authentication::Verified { identity, .. } = authn::authenticate(&[&rule], &http, &context()) else {
        unreachable!("the token verifies")
    };
    assert_eq!(identity.source(), IdentitySource::Jwt);
}

#[test]
fn tokens_are_found_in_the_configured_locations() {
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let default_rule = rule(&[]);
    assert_eq!(outcome(&default_rule, &[], "/").as_deref(), Ok("anonymous"));
    assert_eq!(outcome(&default_rule, &[bearer(&token)], "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&default_rule, &[], &format!("/x?a=1&access_token={token}")).as_deref(), Ok("alice"));
    assert_eq!(
        outcome(&default_rule, &[("authorization".into(), format!("Basic {token}"))], "/").as_deref(),
        Ok("anonymous")
    );
    // Every token in the rule's locations must verify, as in Envoy; the first found is the caller.
    let bob = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"sub": "bob"})));
    let two = outcome(&default_rule, &[bearer(&token)], &format!("/?access_token={bob}"));
    assert_eq!(two.as_deref(), Ok("alice"), "two tokens that both verify");
    let forged = sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims());
    let one_fails = outcome(&default_rule, &[bearer(&token)], &format!("/?access_token={forged}"));
    assert_eq!(one_fails, Err(JwtError::VerificationFails), "a failing token must not hide behind a good one");
    let same_twice = outcome(&default_rule, &[bearer(&token)], &format!("/?access_token={token}"));
    assert_eq!(same_twice.as_deref(), Ok("alice"));

    let mut custom = (*default_rule).clone();
    custom.locations = Box::new([
        TokenLocation::Header { name: "x-token".into(), prefix: "Token ".into() },
        TokenLocation::Cookie("session".into()),
    ]);
    let custom = Arc::new(custom);
    assert_eq!(outcome(&custom, &[("x-token".into(), format!("Token {token}"))], "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&custom, &[("cookie".into(), format!("a=b; session={token}"))], "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&custom, &[bearer(&token)], "/").as_deref(), Ok("anonymous"), "defaults no longer apply");
}

#[test]
fn a_repeated_token_header_is_read_value_by_value() {
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let other = sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims());
    let default_rule = rule(&[]);
    let two = outcome(&default_rule, &[bearer(&token), bearer(&other)], "/");
    assert_eq!(two, Err(JwtError::VerificationFails), "a second token must not hide behind the first");
    let bob = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"sub": "bob"})));
    let both_verify = outcome(&default_rule, &[bearer(&token), bearer(&bob)], "/");
    assert_eq!(both_verify, Err(JwtError::VerificationFails), "as Envoy, which joins two `Authorization` headers");
    let second_only_bearer = [("authorization".into(), "Basic x".into()), bearer(&token)];
    assert_eq!(outcome(&default_rule, &second_only_bearer, "/").as_deref(), Ok("alice"));
    assert_eq!(outcome(&default_rule, &[bearer(&token), bearer(&token)], "/").as_deref(), Ok("alice"));

    let mut by_cookie = (*default_rule).clone();
    by_cookie.locations = Box::new([TokenLocation::Cookie("session".into())]);
    let cookies = [("cookie".into(), format!("session={token}")), ("cookie".into(), format!("a=b; session={other}"))];
    assert_eq!(outcome(&Arc::new(by_cookie), &cookies, "/"), Err(JwtError::VerificationFails));
}

#[test]
fn key_sets_skip_keys_that_must_not_verify() {
    let mut keys: Vec<Value> = serde_json::from_str::<Value>(&jwks(&[("rsa-2048.pem", Algorithm::RS256, "good")]))
        .expect("json")["keys"]
        .as_array()
        .expect("keys")
        .clone();
    let mut short = keys[0].clone();
    short["n"] = json!(URL_SAFE_NO_PAD.encode([0xc5; 128]));
    short["kid"] = json!("short");
    keys.push(short);
    keys.push(json!({"kty": "oct", "k": "c2VjcmV0", "kid": "symmetric"}));
    let mut encryption = keys[0].clone();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc");
    keys.push(encryption);
    let mut mismatched = keys[0].clone();
    mismatched["alg"] = json!("ES256");
    mismatched["kid"] = json!("mismatched");
    keys.push(mismatched);
    let set = KeySet::from_jwks_json(&json!({"keys": keys}).to_string()).expect("jwks");
    assert_eq!(set.len(), 1);
    assert!(set.has_kid("good"));
    assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
    assert!(KeySet::from_jwks_json("<html>").is_err());
    assert!(KeySet::from_jwks_json("{}").is_err());
}

#[test]
fn outputs_carry_claims_and_strip_the_token_and_smuggled_headers() {
    let rule = rule(&[]);
    let evil = with(json!({"preferred_username": "alice\r\nx-admin: true"}));
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let evil_token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &evil);
    let run = |headers: Vec<(String, String)>, path: &str, rule: &Arc<JwtRule>| {
        let http = HttpRequest {
            path,
            headers: headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
            ..HttpRequest::default()
        };
        let authentication = authn::authenticate(&[rule], &http, &context());
        authn::outputs(&[rule], &authentication)
    };
    let set = |outputs: &authn::Outputs| -> HashMap<String, String> {
        outputs.headers_to_set.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
    };
    let removed = |outputs: &authn::Outputs| -> Vec<String> {
        outputs.headers_to_remove.iter().map(ToString::to_string).collect()
    };

    let verified = run(vec![bearer(&token)], "/", &rule);
    let headers = set(&verified);
    assert_eq!(headers.get("x-jwt-payload").map(String::as_str), token.split('.').nth(1));
    assert_eq!(headers.get("x-user").map(String::as_str), Some("alice"));
    assert_eq!(headers.get("x-level").map(String::as_str), Some("3"));
    assert!(!headers.contains_key("x-roles"), "a list claim makes no header");
    assert_eq!(removed(&verified), ["authorization", "x-roles"]);

    let injected = run(vec![bearer(&evil_token)], "/", &rule);
    assert!(!set(&injected).contains_key("x-user"), "CR/LF never reaches a header");
    assert!(removed(&injected).contains(&"x-user".to_string()));

    let anonymous = run(vec![("x-user".into(), "admin".into())], "/", &rule);
    assert!(anonymous.headers_to_set.is_empty());
    assert_eq!(removed(&anonymous), ["x-jwt-payload", "x-user", "x-level", "x-roles"]);

    let by_param = run(vec![], &format!("/?access_token={token}"), &rule);
    assert_eq!(by_param.query_parameters_to_remove, vec![Box::from("access_token")]);
    assert!(!removed(&by_param).contains(&"authorization".to_string()));

    let mut forwarding = (*rule).clone();
    forwarding.forward_original_token = true;
    let forwarded = run(vec![bearer(&token)], "/", &Arc::new(forwarding));
    assert!(!removed(&forwarded).contains(&"authorization".to_string()));
}

/// A cache that remembers every verified token, to show hits skip verification.
#[derive(Default)]
struct MemoryCache(Mutex<HashMap<String, Arc<Identity>>>);

impl MemoryCache {
    fn get(&self, token: &str) -> Option<Arc<Identity>> {
        self.0.lock().expect("lock").get(token).cloned()
    }

    /// Authentication as the server resolves a token, without fetching keys: a remembered
    /// identity when it still counts, else the token verified and remembered.
    fn authenticate<'r>(
        &self,
        rules: &[&'r Arc<JwtRule>],
        http: &HttpRequest<'r>,
        context: &AuthnContext<'_>,
    ) -> Authentication<'r> {
        let Some(credentials) = authn::find_credentials(rules, http) else { return Authentication::Anonymous };
        credentials.authenticate_with(|credential| {
            if let Some(hit) = self.get(credential.token()).and_then(|cached| credential.recalled(cached, context)) {
                return hit;
            }
            let authentication = credential.authenticate(context);
            if let Authentication::Verified { identity, .. } = &authentication {
                self.0.lock().expect("lock").insert(credential.token().into(), identity.clone());
            }
            authentication
        })
    }
}

#[test]
fn verified_tokens_are_cached_and_still_expire() {
    let rule = rule(&[]);
    let cache = MemoryCache::default();
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let headers = [bearer(&token)];
    let http = request_with(&headers);
    assert!(matches!(cache.authenticate(&[&rule], &http, &context()), Authentication::Verified { .. }));
    let cached = cache.get(&token).expect("cached after verification");
    assert_eq!(cached.kid(), Some("rsa"));
    assert_eq!(cached.expires_at(), Some((NOW + 300) as f64));

    // A hit skips the signature check for the same keys: a cache that answers for the token
    // lets the same rule through even with no key lookup at all...
    assert!(matches!(cache.authenticate(&[&rule], &http, &context()), Authentication::Verified { .. }));
    // ...but a rule of the same issuer name with other keys (another namespace's inline JWKS)
    // verifies for itself, and here finds no key.
    let mut other_keys = (*rule).clone();
    other_keys.keys = KeySource::Inline(Arc::new(KeySet::default()));
    let other_keys = Arc::new(other_keys.keeping(&rule.verifier.kept));
    assert!(matches!(
        cache.authenticate(&[&other_keys], &http, &context()),
        Authentication::Failed { error: JwtError::KeyNotFound, .. }
    ));
    // Nor does a hit count once the token has expired, or for a rule that wants another audience.
    let later = AuthnContext { now: NOW + 1000, ..context() };
    assert!(matches!(
        cache.authenticate(&[&rule], &http, &later),
        Authentication::Failed { error: JwtError::Expired, .. }
    ));
    let strict = rule_with_audience(&rule, "billing");
    assert!(matches!(
        cache.authenticate(&[&strict], &http, &context()),
        Authentication::Failed { error: JwtError::AudienceNotAllowed, .. }
    ));
}

fn rule_with_audience(rule: &Arc<JwtRule>, audience: &str) -> Arc<JwtRule> {
    let mut strict = (**rule).clone();
    strict.audiences = Box::new([audience.into()]);
    let kept = Arc::new(ClaimPaths::new(strict.claim_paths().collect::<Vec<_>>(), false));
    Arc::new(strict.keeping(&kept))
}

#[test]
fn cache_hits_check_audiences_from_the_kept_claims() {
    let cache = MemoryCache::default();
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let headers = [bearer(&token)];
    let http = request_with(&headers);
    let jobs = rule(&["jobs-api"]);
    assert!(matches!(cache.authenticate(&[&jobs], &http, &context()), Authentication::Verified { .. }));
    let cached = cache.get(&token).expect("cached");
    assert!(cached.has_audience(&["account".into()]), "`aud` is kept when a rule names audiences");
    // The same kept claims, another audience: decided from the hit.
    let mut billing = (*jobs).clone();
    billing.audiences = Box::new(["billing".into()]);
    assert!(matches!(
        cache.authenticate(&[&Arc::new(billing)], &http, &context()),
        Authentication::Failed { error: JwtError::AudienceNotAllowed, .. }
    ));
    assert!(matches!(cache.authenticate(&[&jobs], &http, &context()), Authentication::Verified { .. }));
}

#[test]
fn a_policy_set_that_reads_other_claims_reads_the_token_again() {
    let cache = MemoryCache::default();
    let token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let headers = [bearer(&token)];
    let http = request_with(&headers);
    let first = rule(&[]);
    assert!(matches!(cache.authenticate(&[&first], &http, &context()), Authentication::Verified { .. }));
    assert_eq!(cache.get(&token).expect("cached").claim_values(&["scope"]).count(), 0, "not read by the first set");
    // A reload brings a policy on `scope`: the cached identity lacks it, so the token is read again.
    let scope: Box<[Box<str>]> = Box::new(["scope".into()]);
    let kept = Arc::new(ClaimPaths::new(first.claim_paths().chain([scope]).collect::<Vec<_>>(), false));
    let reloaded = Arc::new(first.keeping(&kept));
    let Authentication::Verified { identity, .. } = cache.authenticate(&[&reloaded], &http, &context()) else {
        panic!("verifies")
    };
    assert_eq!(identity.claim_values(&["scope"]).collect::<Vec<_>>(), ["openid", "profile"]);
    assert!(
        cache.get(&token).expect("cached").is_vouched_for_by(&reloaded.verifier),
        "the cache holds the new reading"
    );
}

#[test]
fn a_reload_that_swaps_the_inline_key_behind_a_kid_refuses_tokens_of_the_old_key() {
    let cache = MemoryCache::default();
    let old_token = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let new_token = sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims());
    let before = rule(&[]);
    let verify = |rule: &Arc<JwtRule>, token: &str| {
        let headers = [bearer(token)];
        subject_of(&cache.authenticate(&[rule], &request_with(&headers), &context()))
    };
    assert_eq!(verify(&before, &old_token).as_deref(), Ok("alice"));
    assert!(cache.get(&old_token).is_some(), "cached");
    // The reloaded policy publishes another key under the same `kid`, keeping the same claims.
    let swapped = KeySet::from_jwks_json(&jwks(&[("rsa-2048-other.pem", Algorithm::RS256, "rsa")])).expect("jwks");
    let mut reloaded = (*before).clone();
    reloaded.keys = KeySource::Inline(Arc::new(swapped));
    let reloaded = Arc::new(reloaded.keeping(&before.verifier.kept));
    assert_eq!(verify(&reloaded, &old_token), Err(JwtError::VerificationFails), "the old key's token");
    assert_eq!(verify(&reloaded, &new_token).as_deref(), Ok("alice"), "the new key's token");
}

/// A rule of `issuer` (none when empty) with `keys` (files of `tests/keys/` and their kid),
/// reading `x-token` tokens alone when `own_header`, else the default locations.
fn rule_of(issuer: &str, keys: &[(&str, Algorithm, &str)], own_header: bool) -> Arc<JwtRule> {
    let mut other = (*rule(&[])).clone();
    other.issuer = (!issuer.is_empty()).then(|| issuer.into());
    other.keys = KeySource::Inline(Arc::new(KeySet::from_jwks_json(&jwks(keys)).expect("jwks")));
    if own_header {
        other.locations = Box::new([TokenLocation::Header { name: "x-token".into(), prefix: String::new().into() }]);
    }
    Arc::new(other.keeping(&rule(&[]).verifier.kept))
}

fn outcome_of(rules: &[&Arc<JwtRule>], headers: &[(String, String)]) -> Result<(String, String), JwtError> {
    let http = request_with(headers);
    let caller = authn::authenticate(rules, &http, &context()).caller()?.cloned();
    Ok(caller.map_or_else(|| ("".into(), "anonymous".into()), |id| (id.issuer().into(), id.subject().into())))
}

#[test]
fn any_one_rule_whose_tokens_all_verify_satisfies_the_request_as_in_istio() {
    const OTHER: &str = "https://other.example";
    let (jobs, other) = (rule(&[]), rule_of(OTHER, &[("ec-p256.pem", Algorithm::ES256, "ec")], true));
    let alice = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    let bob = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"iss": OTHER, "sub": "bob"})));
    let forged = sign("rsa-2048-other.pem", Algorithm::RS256, "rsa", &claims());
    let x_token = |token: &str| ("x-token".to_string(), token.to_string());
    let both = [&jobs, &other];
    let caller = |issuer: &str, subject: &str| Ok((issuer.to_string(), subject.to_string()));

    // A valid token in one rule's location next to garbage in another's: the valid one satisfies.
    assert_eq!(outcome_of(&both, &[bearer(&alice), x_token("garbage")]), caller(ISSUER, "alice"));
    assert_eq!(outcome_of(&both, &[bearer(&forged), x_token(&bob)]), caller(OTHER, "bob"));
    // Two different tokens that both verify: the first rule in issuer order that verifies is
    // the caller (`https://idp...` before `https://other...`), whatever order the rules came in.
    assert_eq!(outcome_of(&both, &[bearer(&alice), x_token(&bob)]), caller(ISSUER, "alice"));
    assert_eq!(outcome_of(&[&other, &jobs], &[bearer(&alice), x_token(&bob)]), caller(ISSUER, "alice"));
    // None verifies: Envoy's error, the first rule's unless it is an unknown issuer.
    assert_eq!(outcome_of(&both, &[bearer(&forged), x_token("garbage")]), Err(JwtError::VerificationFails));
    assert_eq!(outcome_of(&both, &[bearer(&bob)]), Err(JwtError::UnknownIssuer));
    let bob_expired = with(json!({"iss": OTHER, "sub": "bob", "exp": NOW - 1000}));
    let bob_expired = sign("ec-p256.pem", Algorithm::ES256, "ec", &bob_expired);
    assert_eq!(outcome_of(&both, &[bearer(&bob), x_token(&bob_expired)]), Err(JwtError::Expired));
    // No token anywhere: anonymous.
    assert_eq!(outcome_of(&both, &[]), caller("", "anonymous"));
}

#[test]
fn a_token_refused_by_one_rule_of_its_issuer_is_verified_by_another() {
    // Two RequestAuthentications trust the same issuer with different keys, or audiences.
    let first = rule_of(ISSUER, &[("ec-p256.pem", Algorithm::ES256, "ec")], false);
    let second = rule(&[]);
    let alice = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    assert_eq!(outcome_of(&[&first, &second], &[bearer(&alice)]).map(|(_, sub)| sub).as_deref(), Ok("alice"));
    let billing = rule_with_audience(&second, "billing");
    assert_eq!(outcome_of(&[&billing, &second], &[bearer(&alice)]).map(|(_, sub)| sub).as_deref(), Ok("alice"));
    assert_eq!(outcome_of(&[&billing], &[bearer(&alice)]), Err(JwtError::AudienceNotAllowed));
}

#[test]
fn a_rule_without_issuer_verifies_a_token_of_any_issuer_signed_by_its_keys_as_envoy_does() {
    const ANYONE: &str = "https://anyone.example";
    let any_issuer = rule_of("", &[("ec-p256.pem", Algorithm::ES256, "ec")], false);
    let carol = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"iss": ANYONE, "sub": "carol"})));
    let caller = |issuer: &str, subject: &str| Ok((issuer.to_string(), subject.to_string()));
    // The principal is the token's own `iss`/`sub`.
    assert_eq!(outcome_of(&[&any_issuer], &[bearer(&carol)]), caller(ANYONE, "carol"));
    let no_iss = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"iss": null, "sub": "dan"})));
    assert_eq!(outcome_of(&[&any_issuer], &[bearer(&no_iss)]), caller("", "dan"));
    // Another key's token is refused, whatever its issuer.
    let forged = sign("rsa-2048-other.pem", Algorithm::RS256, "ec", &with(json!({"iss": ANYONE, "sub": "carol"})));
    assert_eq!(outcome_of(&[&any_issuer], &[bearer(&forged)]), Err(JwtError::KeyNotFound));
}

#[test]
fn a_rule_without_issuer_stands_beside_rules_with_one_and_is_tried_first_as_in_istio() {
    const ANYONE: &str = "https://anyone.example";
    let any_issuer = rule_of("", &[("rsa-2048-other.pem", Algorithm::RS256, "other")], false);
    let jobs = rule(&[]);
    let rules = [&jobs, &any_issuer];
    let caller = |issuer: &str, subject: &str| Ok((issuer.to_string(), subject.to_string()));
    // The jobs issuer's token signed by its key: refused by the rule without issuer, verified by its own.
    let alice = sign("rsa-2048.pem", Algorithm::RS256, "rsa", &claims());
    assert_eq!(outcome_of(&rules, &[bearer(&alice)]), caller(ISSUER, "alice"));
    // Any other issuer's token signed by the key of the rule without issuer.
    let carol = with(json!({"iss": ANYONE, "sub": "carol"}));
    assert_eq!(
        outcome_of(&rules, &[bearer(&sign("rsa-2048-other.pem", Algorithm::RS256, "other", &carol))]),
        caller(ANYONE, "carol")
    );
    // A token naming the jobs issuer signed by the other rule's key: verified by the rule
    // without issuer, which checks no `iss`, as Envoy's provider without issuer does.
    let claims_jobs = sign("rsa-2048-other.pem", Algorithm::RS256, "other", &claims());
    assert_eq!(outcome_of(&rules, &[bearer(&claims_jobs)]), caller(ISSUER, "alice"));
    // Signed by neither rule's key: the first rule's refusal, the one without issuer's.
    let forged = sign("rsa-2048.pem", Algorithm::RS256, "other", &carol);
    assert_eq!(outcome_of(&rules, &[bearer(&forged)]), Err(JwtError::VerificationFails));
}

#[test]
fn an_identity_remembered_under_a_rule_without_issuer_is_recalled_under_it_with_its_own_issuer() {
    const ANYONE: &str = "https://anyone.example";
    let any_issuer = rule_of("", &[("ec-p256.pem", Algorithm::ES256, "ec")], false);
    let carol = sign("ec-p256.pem", Algorithm::ES256, "ec", &with(json!({"iss": ANYONE, "sub": "carol"})));
    let headers = [bearer(&carol)];
    let http = request_with(&headers);
    let rules = [&any_issuer];
    let credentials = authn::find_credentials(&rules, &http).expect("a token");
    let Authentication::Verified { identity, .. } = credentials.authenticate(&context()) else {
        unreachable!("verified")
    };
    let recalled = credentials.authenticate_with(|credential| {
        credential.recalled(identity.clone(), &context()).expect("the identity still counts")
    });
    let Authentication::Verified { identity, .. } = recalled else { unreachable!("recalled as verified") };
    assert_eq!((identity.issuer(), identity.subject()), (ANYONE, "carol"));
}
