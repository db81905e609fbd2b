//! Adversarial inputs, each with the safe decision it must get: tokens, key sets, paths, hosts, forwarding headers, header limits, output headers, policy YAML.

#![expect(clippy::expect_used, clippy::panic, reason = "test helpers: a failed step fails the test")]

mod forge;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use forge::{Behavior, EC, ED, FakeIdp, OTHER_RSA, RSA, jwks, public_jwk, sign, sign_raw, unix_now};
use jsonwebtoken::Algorithm;
use portcullis::config::load::{MAX_FILE_BYTES, load_policies, load_policy_text};
use portcullis::core::api_key::{ApiKeyEntry, ApiKeyLocation, ApiKeyTable, KeyDigest};
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::introspection::identity_from_answer;
use portcullis::core::jwt::{JwtError, KeySet};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{Decision, EngineOptions, HttpRequest, Reason, Request, Snapshot, StrMap};
use portcullis::identity::token_cache::VerifiedTokenCache;
use portcullis::telemetry::Metrics;
use serde_json::{Value, json};
use support::{
    CheckBuilder, Server, authorization_policy, config_file, envoy_mode_request, header_in, http_get, http_request,
    metadata_field, paths_policy, policy_dir, proxy_answer, raw_http,
};

const ISSUER: &str = "https://issuer.adversarial.test";
const OTHER_ISSUER: &str = "https://other.adversarial.test";

// ---------------------------------------------------------------------------------------------
// Helpers: policies compiled from YAML (the real compile path) and decided in-process.
// ---------------------------------------------------------------------------------------------

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = load_policy_text("adversarial.yaml", yaml).unwrap_or_else(|errors| panic!("policies: {errors:?}"));
    Snapshot::new(loaded.policies, loaded.authn, WorkloadTable::default(), EngineOptions::default(), "istio-system")
}

fn context() -> AuthnContext<'static> {
    AuthnContext { keys: &NoRemoteKeys, now: unix_now(), clock_skew_secs: 60, max_token_bytes: 8192 }
}

/// Decides a GET for a workload in `namespace`, in-process, remembering verified tokens in
/// `cache` when given.
/// A GET of `path` at `host` with `headers`, in the namespace `extensions` name.
fn get_request<'r>(
    extensions: &'r HashMap<String, String>,
    host: &'r str,
    path: &'r str,
    headers: Vec<(&'r str, &'r str)>,
) -> Request<'r> {
    Request {
        http: Some(HttpRequest { method: "GET", scheme: "https", host, path, headers, joined_headers: false }),
        context_extensions: StrMap::from(extensions),
        ..Request::default()
    }
}

fn decide_in(
    snapshot: &Snapshot,
    cache: Option<&VerifiedTokenCache>,
    namespace: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Decision {
    let extensions = HashMap::from([("namespace".to_string(), namespace.to_string())]);
    let request = get_request(&extensions, host, path, headers.to_vec());
    match cache {
        Some(cache) => snapshot.check_with(&request, |credential| cache.authenticate(credential, &context())),
        None => snapshot.check(&request, &context()),
    }
}

fn claims(subject: &str) -> Value {
    json!({"iss": ISSUER, "sub": subject, "aud": "jobs", "exp": unix_now() + 600, "iat": unix_now(),
           "preferred_username": subject, "tenant": "acme"})
}

/// A RequestAuthentication in `namespace` with one rule per `(issuer, jwks)`, outputs included.
fn request_authentication(namespace: &str, rules: &[(&str, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: {namespace}}}\nspec:\n  jwtRules:\n"
    );
    for (issuer, keys) in rules {
        yaml.push_str(&format!(
            "  - issuer: {issuer}\n    jwks: '{keys}'\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    - {{header: x-user, claim: preferred_username}}\n    - {{header: x-tenant, claim: tenant}}\n"
        ));
    }
    yaml
}

/// An ALLOW policy in `namespace` that admits only verified callers.
fn allow_verified(namespace: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: verified-only, namespace: {namespace}}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n"
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn rsa_keys() -> String {
    jwks(&[public_jwk(RSA, Algorithm::RS256, Some("rsa"))])
}

// ---------------------------------------------------------------------------------------------
// Helpers: the real binary over loopback.
// ---------------------------------------------------------------------------------------------

/// The policies the binary tests run on: namespace `adv` has a token rule, a DENY on `/admin`
/// and an ALLOW list that would admit `/admin` if the DENY missed; `denyonly` has the DENY alone.
fn door_policies() -> String {
    const ADMIN: &[&str] = &["/admin", "/admin/*"];
    [
        request_authentication("adv", &[(ISSUER, rsa_keys())]),
        paths_policy("adv", "deny-admin", "DENY", ADMIN),
        paths_policy("adv", "allow-listed", "ALLOW", &["/public/*", "/admin", "/admin/*"]),
        paths_policy("denyonly", "deny-admin", "DENY", ADMIN),
    ]
    .join("---\n")
}

/// A GET of `path` over HTTPS from 203.0.113.7, for the workload in `namespace`.
fn grpc_check_request(namespace: &str, path: &str, headers: HashMap<String, String>) -> CheckRequest {
    let check = CheckBuilder::new("GET", path).scheme("https").source_address("203.0.113.7");
    check.namespace(namespace).headers(headers).build()
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// A `kid` is only ever compared with the key set's kids: traversal, injection and URL text
/// finds no key (401), and a `kid` that is not a string is malformed.
#[test]
fn kid_with_traversal_or_injection_text_finds_no_key() {
    let policies = snapshot(&(request_authentication("ns", &[(ISSUER, rsa_keys())]) + &allow_verified("ns")));
    let long_kid = "../".repeat(600);
    let kids = [
        "../../../../etc/passwd",
        "/dev/null",
        "rsa/../rsa",
        "rsa\u{0}",
        "rsa ",
        "RSA",
        "' OR '1'='1",
        "$(id)",
        "{{kid}}",
        "http://127.0.0.1:1/keys",
        long_kid.as_str(),
    ];
    let mut failures = Vec::new();
    for kid in kids {
        let token = sign(RSA, Algorithm::RS256, Some(kid), &claims("alice"));
        let decision = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(&token).as_str())]);
        if (decision.reason, decision.jwt_error) != (Reason::InvalidToken, Some(JwtError::KeyNotFound)) {
            failures.push(format!("kid {kid:?}: {:?} {:?}", decision.reason, decision.jwt_error));
        }
    }
    for kid in [json!(7), json!(["rsa"]), json!({"kid": "rsa"}), Value::Null] {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string();
        let token = sign_raw(RSA, Algorithm::RS256, &header, &claims("alice").to_string());
        let decision = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(&token).as_str())]);
        if decision.reason != Reason::InvalidToken {
            failures.push(format!("kid {kid}: {:?} {:?}", decision.reason, decision.jwt_error));
        }
    }
    let control = sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice"));
    let allowed = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(&control).as_str())]);
    assert_eq!(allowed.reason, Reason::AllowedByPolicy, "the control token verifies");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A remote issuer's keys come from its configured JWKS only: kids with traversal text, and
/// `jku`, `x5u`, `x5c` and `jwk` headers naming other keys, never make the server fetch
/// anything else. Each such token gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_headers_and_kid_text_never_make_the_server_fetch_elsewhere() {
    let idp = FakeIdp::start(Behavior::Serve(rsa_keys()));
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: adv}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: {}\n{}",
        idp.url("/certs"),
        allow_verified("adv")
    );
    let policies = policy_dir(&yaml);
    let config = config_file("jwks_min_refetch_interval_secs: 3600\njwks_refetch_wait_ms: 500\n");
    let server = Server::start_with(&[policies.path()], Some(config.path()));

    let attacker_jwk = public_jwk(OTHER_RSA, Algorithm::RS256, Some("attacker"));
    let header = |extra: Value| {
        let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa"});
        for (name, value) in extra.as_object().expect("object") {
            header[name] = value.clone();
        }
        header.to_string()
    };
    let payload = claims("alice").to_string();
    let tokens = [
        (
            "jku to a key set of the attacker's",
            sign_raw(OTHER_RSA, Algorithm::RS256, &header(json!({"jku": idp.url("/jku")})), &payload),
        ),
        (
            "x5u to a certificate",
            sign_raw(OTHER_RSA, Algorithm::RS256, &header(json!({"x5u": idp.url("/x5u")})), &payload),
        ),
        (
            "x5c with a chain",
            sign_raw(
                OTHER_RSA,
                Algorithm::RS256,
                &header(json!({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]})),
                &payload,
            ),
        ),
        (
            "jwk embedding the attacker's key, under the real kid",
            sign_raw(OTHER_RSA, Algorithm::RS256, &header(json!({"jwk": attacker_jwk})), &payload),
        ),
        (
            "jwk embedding the attacker's key, under its own kid",
            sign_raw(
                OTHER_RSA,
                Algorithm::RS256,
                &header(json!({"jwk": attacker_jwk, "kid": "attacker", "jku": idp.url("/jku")})),
                &payload,
            ),
        ),
        ("kid with traversal", sign(RSA, Algorithm::RS256, Some("../../jku"), &claims("alice"))),
        ("kid that is a URL", sign(RSA, Algorithm::RS256, Some(&idp.url("/kid")), &claims("alice"))),
    ];
    let mut client = server.grpc_client().await;
    let mut failures = Vec::new();
    for (name, token) in &tokens {
        let headers = HashMap::from([("authorization".to_string(), bearer(token))]);
        let response = client.check(grpc_check_request("adv", "/", headers)).await.expect("Check answers").into_inner();
        if proxy_answer(&response).0 != 401 {
            failures.push(format!("{name}: status {}", proxy_answer(&response).0));
        }
    }
    let control = sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice"));
    let headers = HashMap::from([("authorization".to_string(), bearer(&control))]);
    let allowed = client.check(grpc_check_request("adv", "/", headers)).await.expect("Check answers").into_inner();
    assert_eq!(proxy_answer(&allowed).0, 200, "the control token verifies");
    let paths = idp.paths();
    assert!(paths.iter().all(|path| path == "/certs"), "fetched something besides the JWKS: {paths:?}");
    assert!(paths.len() <= 2, "one fetch at start and at most one refetch per interval: {paths:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two different tokens, each valid for its own issuer and location: as in Istio, the first
/// rule in issuer order that verifies is the caller, never the other token's; a token that fails
/// where a rule reads it refuses the request unless another rule is satisfied.
#[test]
fn two_tokens_of_two_issuers_in_two_locations_are_judged_as_istio_does() {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: ns}}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n  - issuer: {OTHER_ISSUER}\n    jwks: '{}'\n    fromHeaders: [{{name: x-other-token}}]\n{}",
        rsa_keys(),
        jwks(&[public_jwk(EC, Algorithm::ES256, Some("ec"))]),
        allow_verified("ns")
    );
    let policies = snapshot(&yaml);
    let first = sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice"));
    let mut other_claims = claims("mallory");
    other_claims["iss"] = json!(OTHER_ISSUER);
    let second = sign(EC, Algorithm::ES256, Some("ec"), &other_claims);
    let decide = |headers: &[(&str, &str)]| decide_in(&policies, None, "ns", "/", "app.test", headers);
    assert_eq!(decide(&[("authorization", bearer(&first).as_str())]).reason, Reason::AllowedByPolicy);
    assert_eq!(decide(&[("x-other-token", &second)]).reason, Reason::AllowedByPolicy);
    let both = decide(&[("authorization", bearer(&first).as_str()), ("x-other-token", &second)]);
    assert_eq!(both.reason, Reason::AllowedByPolicy);
    let caller = both.identity.as_ref().map(|identity| (identity.issuer().to_string(), identity.subject().to_string()));
    assert_eq!(caller, Some((ISSUER.to_string(), "alice".to_string())), "`https://issuer...` sorts first");
    let query = format!("/?access_token={second}");
    let header_and_query =
        decide_in(&policies, None, "ns", &query, "app.test", &[("authorization", bearer(&first).as_str())]);
    assert_eq!(header_and_query.reason, Reason::InvalidToken, "a token of the other issuer in the query counts too");
}

/// The same location twice: two `Authorization` headers carry two different tokens, and the
/// service may read either. Envoy joins them into one value, which fails to parse; the HTTP door
/// must refuse them too, not verify the first and pass the second on.
#[test]

fn two_authorization_headers_are_refused_on_the_http_door() {
    let mut yaml = door_policies();
    yaml = yaml.replace("jwks: '", "forwardOriginalToken: true\n    jwks: '");
    let policies = policy_dir(&yaml);
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let alice = sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice"));
    let admin = sign(OTHER_RSA, Algorithm::RS256, Some("rsa"), &claims("admin"));
    let single = format!("Authorization: Bearer {alice}\r\n");
    let (status, _, _) = raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", &single));
    assert_eq!(status, 200, "one valid token");
    let twice = format!("Authorization: Bearer {alice}\r\nAuthorization: Bearer {admin}\r\n");
    let (status, _, _) = raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", &twice));
    assert_eq!(status, 401, "two different tokens in two Authorization headers");
}

/// Duplicate member names: the lexically last one is the value (RFC 7519 section 4), and what
/// the policy judged is what the service is told in the output headers.
#[test]
fn duplicate_claim_names_are_judged_as_the_service_is_told() {
    let mut yaml = request_authentication("ns", &[(ISSUER, rsa_keys())]);
    yaml.push_str(&format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: admin-only, namespace: ns}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/admin\"]}}}}]\n"
    ));
    let policies = snapshot(&yaml);
    let header = r#"{"alg":"RS256","typ":"JWT","kid":"rsa"}"#;
    let exp = unix_now() + 600;
    let payload = |first: &str, last: &str| {
        format!(
            r#"{{"iss":"{ISSUER}","sub":"{first}","preferred_username":"{first}","exp":{exp},"sub":"{last}","preferred_username":"{last}"}}"#
        )
    };
    let decide =
        |token: &str| decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(token).as_str())]);

    let admin_last = decide(&sign_raw(RSA, Algorithm::RS256, header, &payload("alice", "admin")));
    let admin_first = decide(&sign_raw(RSA, Algorithm::RS256, header, &payload("admin", "alice")));
    let user_header = |decision: &Decision| {
        decision.headers_to_set.iter().find(|(name, _)| &**name == "x-user").map(|(_, value)| value.clone())
    };
    assert_eq!(admin_last.reason, Reason::AllowedByPolicy, "judged as the last `sub`");
    assert_eq!(user_header(&admin_last).as_deref(), Some("admin"), "and the service is told the same");
    assert_eq!(admin_first.reason, Reason::NoAllowMatch, "an earlier duplicate is not the caller");

    // The same in the header: the last `alg` decides, so `none` can never hide behind RS256.
    let none_last = r#"{"alg":"RS256","kid":"rsa","alg":"none"}"#;
    let rs256_last = r#"{"alg":"none","kid":"rsa","alg":"RS256"}"#;
    let payload = payload("admin", "admin");
    assert_eq!(decide(&sign_raw(RSA, Algorithm::RS256, none_last, &payload)).reason, Reason::InvalidToken);
    assert_eq!(decide(&sign_raw(RSA, Algorithm::RS256, rs256_last, &payload)).reason, Reason::AllowedByPolicy);
    // And a duplicate `iss` cannot borrow another issuer's rule.
    let iss_twice = format!(r#"{{"iss":"{ISSUER}","sub":"admin","exp":{exp},"iss":"{OTHER_ISSUER}"}}"#);
    let other = decide(&sign_raw(RSA, Algorithm::RS256, header, &iss_twice));
    assert_eq!((other.reason, other.jwt_error), (Reason::InvalidToken, Some(JwtError::UnknownIssuer)));
}

/// A token whose `iss` is issuer A but that is signed with issuer B's key (under B's kid, A's
/// kid, a kid both share, or none) is refused: a rule only ever uses its own issuer's keys.
#[test]
fn cross_issuer_key_confusion_is_refused() {
    let a_keys =
        jwks(&[public_jwk(RSA, Algorithm::RS256, Some("a")), public_jwk(RSA, Algorithm::RS256, Some("shared"))]);
    let b_keys = jwks(&[
        public_jwk(OTHER_RSA, Algorithm::RS256, Some("b")),
        public_jwk(OTHER_RSA, Algorithm::RS256, Some("shared")),
    ]);
    let yaml = request_authentication("ns", &[(ISSUER, a_keys), (OTHER_ISSUER, b_keys)]) + &allow_verified("ns");
    let policies = snapshot(&yaml);
    let decide = |token: &str| {
        let decision = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(token).as_str())]);
        (decision.reason, decision.jwt_error)
    };
    let as_a = claims("alice");
    let mut as_b = claims("bob");
    as_b["iss"] = json!(OTHER_ISSUER);
    let refused = |error| (Reason::InvalidToken, Some(error));
    type Outcome = (Reason, Option<JwtError>);
    let cases: Vec<(&str, String, Outcome)> = vec![
        (
            "iss A, B's kid, B's key",
            sign(OTHER_RSA, Algorithm::RS256, Some("b"), &as_a),
            refused(JwtError::KeyNotFound),
        ),
        (
            "iss A, A's kid, B's key",
            sign(OTHER_RSA, Algorithm::RS256, Some("a"), &as_a),
            refused(JwtError::VerificationFails),
        ),
        (
            "iss A, shared kid, B's key",
            sign(OTHER_RSA, Algorithm::RS256, Some("shared"), &as_a),
            refused(JwtError::VerificationFails),
        ),
        (
            "iss A, no kid, B's key",
            sign(OTHER_RSA, Algorithm::RS256, None, &as_a),
            refused(JwtError::VerificationFails),
        ),
        ("iss B, A's kid, A's key", sign(RSA, Algorithm::RS256, Some("a"), &as_b), refused(JwtError::KeyNotFound)),
        ("iss A, A's own key", sign(RSA, Algorithm::RS256, Some("a"), &as_a), (Reason::AllowedByPolicy, None)),
        ("iss B, B's own key", sign(OTHER_RSA, Algorithm::RS256, Some("b"), &as_b), (Reason::AllowedByPolicy, None)),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, token, expected)| {
            let got = decide(&token);
            (got != expected).then(|| format!("{name}: expected {expected:?}, got {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two namespaces trust the same issuer name with different keys. A token verified in one
/// namespace (and remembered by the verified-token cache) must not be accepted in the other,
/// whose keys never signed it.
#[test]

fn a_token_verified_under_one_namespaces_keys_is_not_accepted_under_anothers() {
    let mut yaml = request_authentication("tenant-a", &[(ISSUER, rsa_keys())]);
    yaml.push_str(&allow_verified("tenant-a"));
    yaml.push_str("---\n");
    yaml.push_str(&request_authentication(
        "tenant-b",
        &[(ISSUER, jwks(&[public_jwk(OTHER_RSA, Algorithm::RS256, Some("rsa"))]))],
    ));
    yaml.push_str(&allow_verified("tenant-b"));
    let policies = snapshot(&yaml);
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &claims("admin"));
    let headers = [("authorization", bearer(&token))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();

    // Without a cache, each namespace judges the token with its own keys.
    let uncached_b = decide_in(&policies, None, "tenant-b", "/", "app.test", &headers);
    assert_eq!(uncached_b.reason, Reason::InvalidToken, "tenant-b's keys never signed it");

    // With the server's cache, in the order an attacker would choose.
    let cache = VerifiedTokenCache::new(100, Arc::new(Metrics::new()));
    let in_a = decide_in(&policies, Some(&cache), "tenant-a", "/", "app.test", &headers);
    assert_eq!(in_a.reason, Reason::AllowedByPolicy, "tenant-a's keys signed it");
    let in_b = decide_in(&policies, Some(&cache), "tenant-b", "/", "app.test", &headers);
    assert_eq!(
        (in_b.reason, in_b.jwt_error),
        (Reason::InvalidToken, Some(JwtError::VerificationFails)),
        "a cache hit from tenant-a let the token into tenant-b"
    );
}

// ---------------------------------------------------------------------------------------------
// Key sets
// ---------------------------------------------------------------------------------------------

/// Duplicate kids: a token verifies only with a key of the issuer's own set that fits its
/// algorithm; the kid collision never lets a symmetric or foreign key in.
#[test]
fn duplicate_kids_verify_only_with_the_issuers_own_fitting_keys() {
    let keys = jwks(&[
        json!({"kty": "oct", "kid": "dup", "k": "c2VjcmV0"}),
        public_jwk(RSA, Algorithm::RS256, Some("dup")),
        public_jwk(EC, Algorithm::ES256, Some("dup")),
    ]);
    let set = KeySet::from_jwks_json(&keys).expect("jwks");
    assert_eq!(set.len(), 2, "the oct key is skipped: {:?}", set.skipped);
    let policies = snapshot(&(request_authentication("ns", &[(ISSUER, keys)]) + &allow_verified("ns")));
    let decide = |token: &str| {
        let decision = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(token).as_str())]);
        (decision.reason, decision.jwt_error)
    };
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header { kid: Some("dup".into()), ..jsonwebtoken::Header::new(Algorithm::HS256) },
        &claims("alice"),
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .expect("signs");
    assert_eq!(decide(&sign(RSA, Algorithm::RS256, Some("dup"), &claims("alice"))), (Reason::AllowedByPolicy, None));
    assert_eq!(decide(&sign(EC, Algorithm::ES256, Some("dup"), &claims("alice"))), (Reason::AllowedByPolicy, None));
    assert_eq!(
        decide(&sign(OTHER_RSA, Algorithm::RS256, Some("dup"), &claims("alice"))),
        (Reason::InvalidToken, Some(JwtError::VerificationFails))
    );
    assert_eq!(
        decide(&hs256),
        (Reason::InvalidToken, Some(JwtError::VerificationFails)),
        "HS256 with the oct key's secret"
    );
    assert_eq!(
        decide(&sign(ED, Algorithm::EdDSA, Some("dup"), &claims("alice"))),
        (Reason::InvalidToken, Some(JwtError::KeyNotFound)),
        "no Ed25519 key under that kid"
    );
}

/// Keys whose type does not fit their pinned `alg` are skipped, and a token never verifies
/// with a key of another type than its `alg` needs.
#[test]
fn keys_whose_type_does_not_fit_the_alg_are_never_used() {
    let mut ec_as_rsa = public_jwk(EC, Algorithm::ES256, Some("ec-as-rs256"));
    ec_as_rsa["alg"] = json!("RS256");
    let mut okp_as_es = public_jwk(ED, Algorithm::EdDSA, Some("okp-as-es256"));
    okp_as_es["alg"] = json!("ES256");
    let mut rsa_as_hmac = public_jwk(RSA, Algorithm::RS256, Some("rsa-as-hs256"));
    rsa_as_hmac["alg"] = json!("HS256");
    let mut p256_as_es384 = public_jwk(EC, Algorithm::ES256, Some("p256-as-es384"));
    p256_as_es384["alg"] = json!("ES384");
    let mut rsa_as_none = public_jwk(RSA, Algorithm::RS256, Some("rsa-as-none"));
    rsa_as_none["alg"] = json!("none");
    let set = KeySet::from_jwks_json(&jwks(&[ec_as_rsa, okp_as_es, rsa_as_hmac, p256_as_es384, rsa_as_none]))
        .expect("a JWKS");
    assert!(set.is_empty(), "every mismatched key is skipped, kept: {:?}", set.keys);
    assert_eq!(set.skipped.len(), 5, "{:?}", set.skipped);

    // Unpinned keys: the token's alg must fit the key's type.
    let mut unpinned_rsa = public_jwk(RSA, Algorithm::RS256, Some("rsa"));
    unpinned_rsa.as_object_mut().expect("object").remove("alg");
    let mut unpinned_ec = public_jwk(EC, Algorithm::ES256, Some("ec"));
    unpinned_ec.as_object_mut().expect("object").remove("alg");
    let keys = jwks(&[unpinned_rsa, unpinned_ec]);
    let policies = snapshot(&(request_authentication("ns", &[(ISSUER, keys)]) + &allow_verified("ns")));
    let decide = |token: &str| {
        let decision = decide_in(&policies, None, "ns", "/", "app.test", &[("authorization", bearer(token).as_str())]);
        (decision.reason, decision.jwt_error)
    };
    assert_eq!(
        decide(&sign(EC, Algorithm::ES256, Some("rsa"), &claims("alice"))),
        (Reason::InvalidToken, Some(JwtError::KeyNotFound)),
        "ES256 under an RSA key's kid"
    );
    assert_eq!(
        decide(&sign(ED, Algorithm::EdDSA, Some("ec"), &claims("alice"))),
        (Reason::InvalidToken, Some(JwtError::KeyNotFound)),
        "EdDSA under an EC key's kid"
    );
    assert_eq!(decide(&sign(RSA, Algorithm::PS256, Some("rsa"), &claims("alice"))), (Reason::AllowedByPolicy, None));
}

/// A JWKS endpoint that trickles one byte a second, or sends 50 MB, gives no keys within the
/// fetch bound; the server reads no more than its limit, and the issuer's tokens get 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_and_50_mb_key_sets_give_no_keys_within_the_bound() {
    let trickle = FakeIdp::start(Behavior::Trickle(rsa_keys(), Duration::from_secs(1)));
    let huge = FakeIdp::start(Behavior::Huge(50 * 1024 * 1024));
    let redirect = FakeIdp::start(Behavior::Serve(rsa_keys()));
    redirect.set(Behavior::Redirect(redirect.url("/redirected")));
    let rule = |issuer: &str, uri: String| format!("  - issuer: {issuer}\n    jwksUri: {uri}\n");
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: adv}}\nspec:\n  jwtRules:\n{}{}{}{}",
        rule("https://trickle.test", trickle.url("/certs")),
        rule("https://huge.test", huge.url("/certs")),
        rule("https://redirect.test", redirect.url("/certs")),
        allow_verified("adv"),
    );
    let policies = policy_dir(&yaml);
    let config = config_file("jwks_fetch_timeout_ms: 2000\njwks_ready_timeout_secs: 6\n");
    let server = Server::start_with(&[policies.path()], Some(config.path()));
    let (status, body) = http_get(server.admin, "/readyz");
    assert_eq!(status, 200);
    for issuer in ["https://trickle.test", "https://huge.test", "https://redirect.test"] {
        assert!(body.contains(&format!("no keys for issuer {issuer}")), "{issuer} in {body:?}");
    }
    let largest = huge.largest_answer.load(std::sync::atomic::Ordering::SeqCst);
    assert!(largest < 20 * 1024 * 1024, "the server read on past its 1 MiB limit: {largest} bytes of 50 MB sent");
    assert!(
        !redirect.paths().iter().any(|path| path == "/redirected"),
        "a redirect was followed: {:?}",
        redirect.paths()
    );

    let mut client = server.grpc_client().await;
    let mut as_trickle = claims("alice");
    as_trickle["iss"] = json!("https://trickle.test");
    let token = sign(RSA, Algorithm::RS256, Some("rsa"), &as_trickle);
    let headers = HashMap::from([("authorization".to_string(), bearer(&token))]);
    let check = client.check(grpc_check_request("adv", "/", headers));
    // A hang guard only: an issuer without keys is answered at once, whatever its IdP does.
    let response = tokio::time::timeout(Duration::from_secs(30), check)
        .await
        .expect("the Check answers while the IdP trickles")
        .expect("Check answers")
        .into_inner();
    assert_eq!(proxy_answer(&response).0, 401);
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else { panic!("denied") };
    assert_eq!(denied.body, "Jwks remote fetch is failed");
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// Why a path trick is refused, as the decision log and the response metadata say; the status
/// follows from it.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The DENY rule matched the normalized path: 403 `denied_by_policy`.
    Denied,
    /// No ALLOW rule matched (a DENY rule did not see `/admin` in that spelling): 403 `no_allow_match`.
    NotAllowed,
    /// The path cannot be normalized safely: 400 `invalid_path`.
    Invalid,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::Denied => "denied_by_policy",
            Self::NotAllowed => "no_allow_match",
            Self::Invalid => "invalid_path",
        }
    }

    fn status(self) -> u16 {
        match self {
            Self::Denied | Self::NotAllowed => 403,
            Self::Invalid => 400,
        }
    }
}

/// Raw request targets that name `/admin` (denied by a DENY rule) or `/private` (outside the
/// ALLOW list) in some other spelling, each with why it is refused; plain `/public/...` is
/// allowed.
const PATHS_TO_DENIED_RESOURCES: &[(&str, Refusal)] = &[
    ("/admin", Refusal::Denied),
    ("/admin/", Refusal::Denied),
    ("/admin/users", Refusal::Denied),
    ("//admin", Refusal::Denied),
    ("/./admin", Refusal::Denied),
    ("/public/../admin", Refusal::Denied),
    ("/public/./../admin/users", Refusal::Denied),
    ("/public/%2e%2e/admin", Refusal::Denied),
    ("/public/%2E%2E/admin", Refusal::Denied),
    ("/public/.%2e/admin", Refusal::Denied),
    ("/public/%2e./admin", Refusal::Denied),
    ("/public/..%2fadmin", Refusal::Denied),
    ("/public/..%2Fadmin/users", Refusal::Denied),
    ("/public%2f..%2fadmin", Refusal::NotAllowed),
    ("/admin%2fusers", Refusal::NotAllowed),
    ("/public/..%5cadmin", Refusal::Denied),
    ("/%61dmin", Refusal::Denied),
    ("/%61%64%6d%69%6e/users", Refusal::Denied),
    ("/public\\..\\admin", Refusal::Denied),
    ("\\admin", Refusal::Invalid),
    ("/public/..\\admin", Refusal::Denied),
    ("/public/x/../../admin", Refusal::Denied),
    ("/public/..;/admin", Refusal::Invalid),
    ("/public/.;/../admin", Refusal::Invalid),
    ("/admin%00", Refusal::Invalid),
    ("/public/%00/../../admin", Refusal::Invalid),
    ("/admin%", Refusal::Invalid),
    ("/admin%zz", Refusal::Invalid),
    ("/admin?/public/x", Refusal::Denied),
    ("/admin#/public/x", Refusal::Denied),
    ("/admin/./", Refusal::Denied),
    ("/admin/../admin", Refusal::Denied),
    ("/private", Refusal::NotAllowed),
    ("/public/../private", Refusal::NotAllowed),
    ("/public/%2e%2e/private", Refusal::NotAllowed),
    ("/%2561dmin", Refusal::NotAllowed),
    ("/ADMIN", Refusal::NotAllowed),
];

/// The same paths against a namespace with only the DENY rule: what it denies must stay denied.
const DENY_ONLY_TARGETS: &[(&str, Refusal)] = &[
    ("/admin", Refusal::Denied),
    ("//admin", Refusal::Denied),
    ("/./admin/x", Refusal::Denied),
    ("/x/../admin", Refusal::Denied),
    ("/x/%2e%2e/admin", Refusal::Denied),
    ("/%61dmin", Refusal::Denied),
    ("/x\\..\\admin", Refusal::Denied),
    ("/admin%2fx", Refusal::Denied),
    ("/x/..%2fadmin", Refusal::Denied),
    ("/admin/x;y", Refusal::Denied),
    ("/x/..;/admin", Refusal::Invalid),
];

fn allowed_control_paths() -> [&'static str; 3] {
    ["/public/x", "/public/a%2Fb", "/public/caf%C3%A9"]
}

/// The path tricks of both namespaces with their refusal, then the allowed controls (`None`).
fn path_trick_cases() -> Vec<(&'static str, &'static str, Option<Refusal>)> {
    let tricks = PATHS_TO_DENIED_RESOURCES.iter().map(|&(path, refusal)| ("adv", path, Some(refusal)));
    let deny_only = DENY_ONLY_TARGETS.iter().map(|&(path, refusal)| ("denyonly", path, Some(refusal)));
    let controls = allowed_control_paths().into_iter().map(|path| ("adv", path, None));
    tricks.chain(deny_only).chain(controls).collect()
}

/// Every spelling through the HTTP door, as raw request lines from a plain TCP client, with the
/// decision log at `debug`: each decided check has its line there, at that level, with its
/// reason; a target the HTTP parser refuses (not starting with `/`) is answered before any
/// decision.
#[test]
fn path_tricks_through_the_http_door_never_reach_a_denied_resource() {
    let policies = policy_dir(&door_policies());
    let settings = "decision_log: all\ndecision_log_level: debug\nlog_level: debug\n";
    let server = Server::with_http_door(policies.path(), "envoy", settings);
    let cases = path_trick_cases();
    let mut failures = Vec::new();
    for (index, (namespace, path, refusal)) in cases.iter().enumerate() {
        let request_id = format!("x-request-id: trick-{index}\r\n");
        let (status, _, body) = raw_http(server.http, &envoy_mode_request(path.as_bytes(), namespace, &request_id));
        let expected = refusal.map_or(200, Refusal::status);
        if status != expected {
            failures.push(format!("{namespace} {path}: {status} {body:?}, not {expected}"));
        }
    }
    let last = format!("request_id=\"trick-{}\"", cases.len() - 1);
    let decided: Vec<String> =
        server.log_until(&["Decided", &last]).into_iter().filter(|line| line.contains("Decided")).collect();
    for (index, (namespace, path, refusal)) in cases.iter().enumerate() {
        let id = format!("request_id=\"trick-{index}\"");
        let line = decided.iter().find(|line| line.contains(&id));
        let (decision, reason) = refusal.map_or(("allow", "allowed_by_policy"), |refusal| ("deny", refusal.reason()));
        match line {
            None if !path.starts_with('/') => {}
            None => failures.push(format!("{namespace} {path}: no decision line")),
            Some(line) => {
                let wanted = [" DEBUG ", &format!("decision=\"{decision}\""), &format!("reason=\"{reason}\"")];
                if !wanted.iter().all(|part| line.contains(part)) {
                    failures.push(format!("{namespace} {path}: the decision line lacks {wanted:?}: {line}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every spelling through the gRPC door, as Envoy would send it without normalizing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_through_grpc_never_reach_a_denied_resource() {
    let policies = policy_dir(&door_policies());
    let server = Server::start(&[policies.path()]);
    let mut client = server.grpc_client().await;
    let mut failures = Vec::new();
    for (namespace, path, refusal) in path_trick_cases() {
        let response = client
            .check(grpc_check_request(namespace, path, HashMap::new()))
            .await
            .expect("Check answers")
            .into_inner();
        let got = (proxy_answer(&response).0, metadata_field(&response, "reason").unwrap_or_default());
        let expected = refusal.map_or((200, "allowed_by_policy"), |refusal| (refusal.status(), refusal.reason()));
        if (got.0, got.1.as_str()) != expected {
            failures.push(format!("{namespace} {path}: {got:?}, not {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bytes that are not UTF-8 (or are overlong UTF-8) in the path: the HTTP door answers 400, and
/// the gRPC door, given them raw in `header_map`, never allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_and_overlong_path_bytes_are_never_allowed() {
    let policies = policy_dir(&door_policies());
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let raw_targets: [&[u8]; 5] = [
        b"/admin\xff",
        b"/public/\xc0\xae\xc0\xae/admin",
        b"/public/\xe0\x80\xae\xe0\x80\xae/private",
        b"/ad\x80min",
        b"/public/\xc3",
    ];
    let mut failures = Vec::new();
    for target in raw_targets {
        let (status, _, _) = raw_http(server.http, &envoy_mode_request(target, "adv", ""));
        if status != 400 {
            failures.push(format!("HTTP door {}: {status}, not 400", String::from_utf8_lossy(target)));
        }
    }
    let mut client = server.grpc_client().await;
    for target in raw_targets {
        let mut check = grpc_check_request("adv", "", HashMap::new());
        if let Some(http) = check.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
            http.header_map = Some(HeaderMap {
                headers: vec![
                    HeaderValue { key: ":path".into(), value: String::new(), raw_value: target.to_vec() },
                    HeaderValue { key: ":method".into(), value: String::new(), raw_value: b"GET".to_vec() },
                ],
            });
        }
        let response = client.check(check).await.expect("Check answers").into_inner();
        if proxy_answer(&response).0 != 400 {
            let status = proxy_answer(&response).0;
            failures.push(format!("gRPC raw :path {}: {status}, not 400", String::from_utf8_lossy(target)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// nginx `auth_request` passes `$request_uri` raw. When that header cannot be read as text,
/// the door must not fall back to judging the auth request's own path.
#[test]

fn an_unreadable_forwarded_uri_is_not_replaced_by_the_auth_requests_path() {
    let policies = policy_dir(&door_policies());
    let mut failures = Vec::new();
    for (mode, header) in
        [("nginx", "X-Original-URI"), ("traefik", "X-Forwarded-Uri"), ("ingress-nginx", "X-Original-URL")]
    {
        let server = Server::with_http_door(policies.path(), mode, "");
        let value: &[u8] = if header == "X-Original-URL" { b"http://app.test/admin/\xff" } else { b"/admin/\xff" };
        let mut request = b"GET /_auth?namespace=adv&app=adv HTTP/1.1\r\nHost: portcullis\r\n".to_vec();
        request.extend_from_slice(header.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let (status, _, body) = raw_http(server.http, &request);
        if status != 400 {
            failures.push(format!("{mode} {header}: /admin/\\xff got {status}, not 400 ({body:?})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A trusted proxy relays its client's headers. With nginx (which sets `X-Original-URI`), a
/// client-supplied `X-Forwarded-Uri` must not choose the path that is judged; with Envoy's
/// HTTP mode (which sets none), a client-supplied `X-Original-URI` must not either.
#[test]

fn client_copies_of_forwarding_headers_do_not_choose_the_judged_path() {
    let policies = policy_dir(&door_policies());
    let context = "?namespace=adv&app=adv";
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    // Each judges /admin/users, or denies because two dialects' headers are present: 403.
    let cases: Vec<(&str, &str, String, Headers)> = vec![
        (
            "nginx auth_request, client adds X-Forwarded-Uri",
            "nginx",
            format!("/_auth{context}"),
            vec![("X-Original-URI", "/admin/users"), ("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/public/x")],
        ),
        (
            "ingress-nginx, client adds X-Forwarded-Uri",
            "ingress-nginx",
            format!("/_auth{context}"),
            vec![("X-Original-URL", "https://app.test/admin/users"), ("X-Forwarded-Uri", "/public/x")],
        ),
        (
            "nginx auth_request, client adds X-Original-URL",
            "nginx",
            format!("/_auth{context}"),
            vec![("X-Original-URI", "/admin/users"), ("X-Original-URL", "https://app.test/public/x")],
        ),
        (
            "auto, nginx auth_request, client adds X-Forwarded-Uri (two dialects: refused)",
            "auto",
            format!("/_auth{context}"),
            vec![("X-Original-URI", "/admin/users"), ("X-Forwarded-Uri", "/public/x")],
        ),
        (
            // Behind Envoy's HTTP mode no dialect header is expected: pinned `http_mode: envoy`
            // ignores a client's X-Original-URI (and deploy/envoy/envoy-http.yaml does not
            // forward it).
            "Envoy HTTP mode, client adds X-Original-URI",
            "envoy",
            "/admin/users".into(),
            vec![("x-portcullis-context", "namespace=adv"), ("X-Original-URI", "/public/x")],
        ),
    ];
    let mut failures = Vec::new();
    for (name, mode, target, headers) in &cases {
        let server = Server::with_http_door(policies.path(), mode, "");
        let (status, _, _) = http_request(server.http, "GET", target, headers);
        if status != 403 {
            failures.push(format!("{name}: {status}, not 403"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Tomcat and Spring drop `;parameters` from every segment, so `/admin;x/users` is their
/// `/admin/users`. Where only a DENY rule guards `/admin`, such a path must stay denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn path_parameters_on_a_denied_segment_stay_denied() {
    let policies = policy_dir(&door_policies());
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let mut client = server.grpc_client().await;
    let mut failures = Vec::new();
    // (`/ad;min` is not here: Tomcat and Spring read it as `/ad`, which no DENY rule guards.)
    // Denied by the DENY rule (403), or refused as a dot segment with parameters (400).
    for (path, expected) in
        [("/admin;/users", 403), ("/admin;jsessionid=1", 403), ("/admin;x/users", 403), ("/public/..;x/admin", 400)]
    {
        let (status, _, _) = raw_http(server.http, &envoy_mode_request(path.as_bytes(), "denyonly", ""));
        if status != expected {
            failures.push(format!("HTTP door {path}: {status}, not {expected}"));
        }
        let response =
            client.check(grpc_check_request("denyonly", path, HashMap::new())).await.expect("decided").into_inner();
        if proxy_answer(&response).0 != expected {
            failures.push(format!("gRPC {path}: {}, not {expected}", proxy_answer(&response).0));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Hosts and forwarding
// ---------------------------------------------------------------------------------------------

/// Hosts match without case, and as written otherwise: under an ALLOW rule a trailing dot or a
/// port fails closed; a DENY rule catches those spellings only when it lists them, which is
/// how SECURITY.md says to write one.
#[test]
fn hosts_differing_in_case_trailing_dot_or_port() {
    let hosts_rule = |hosts: &str| format!("  - to: [{{operation: {{hosts: [{hosts}]}}}}]\n");
    let every_spelling = r#""admin.example.com", "admin.example.com:*", "admin.example.com.", "admin.example.com.:*""#;
    let policies = snapshot(
        &[
            authorization_policy("allow", "only-api", "ALLOW", &hosts_rule(r#""api.example.com""#)),
            authorization_policy("deny", "no-admin", "DENY", &hosts_rule(r#""admin.example.com""#)),
            authorization_policy("deny-all-spellings", "no-admin", "DENY", &hosts_rule(every_spelling)),
        ]
        .join("---\n"),
    );
    let decide = |namespace: &str, host: &str| decide_in(&policies, None, namespace, "/", host, &[]).reason;
    let spellings = [
        "admin.example.com",
        "ADMIN.Example.COM",
        "admin.example.com:443",
        "admin.example.com.",
        "Admin.Example.Com.:8443",
    ];
    assert_eq!(decide("allow", "API.EXAMPLE.COM"), Reason::AllowedByPolicy);
    for host in
        ["api.example.com.", "api.example.com:443", "api.example.com.:443", "api.example.com.evil", "xapi.example.com"]
    {
        assert_eq!(decide("allow", host), Reason::NoAllowMatch, "ALLOW fails closed for {host}");
    }
    for host in spellings {
        assert_eq!(decide("deny-all-spellings", host), Reason::DeniedByPolicy, "{host}");
    }
    // Istio's semantics, kept: an exact DENY host misses the other spellings.
    assert_eq!(decide("deny", "ADMIN.example.com"), Reason::DeniedByPolicy);
    assert_eq!(decide("deny", "admin.example.com:443"), Reason::NoPolicies);
    assert_eq!(decide("deny", "admin.example.com."), Reason::NoPolicies);
}

const INTERNAL_ONLY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: internal-only, namespace: istio-system}
spec:
  rules:
  - from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]
"#;

/// With one trusted proxy hop, entries a client prepends to `x-forwarded-for` are ignored:
/// only the one the proxy appended counts, on the gRPC door and from a trusted HTTP peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_entries_from_the_client_are_ignored() {
    let policies = policy_dir(INTERNAL_ONLY);
    let server = Server::with_http_door(policies.path(), "envoy", "trusted_proxy_hops: 1\n");
    let mut client = server.grpc_client().await;
    let cases = [
        ("10.0.0.1, 203.0.113.7", 403),
        ("10.0.0.1,203.0.113.7", 403),
        ("10.0.0.1, 10.0.0.2, 203.0.113.7", 403),
        ("203.0.113.7", 403),
        ("not-an-ip, 203.0.113.7", 403),
        ("203.0.113.7, 10.0.0.1", 200),
    ];
    let mut failures = Vec::new();
    for (chain, expected) in cases {
        let headers = HashMap::from([("x-forwarded-for".to_string(), chain.to_string())]);
        let response = client.check(grpc_check_request("", "/", headers)).await.expect("Check answers").into_inner();
        if proxy_answer(&response).0 != expected {
            failures.push(format!("gRPC x-forwarded-for {chain:?}: {} not {expected}", proxy_answer(&response).0));
        }
        let (status, _, _) = http_request(server.http, "GET", "/", &[("X-Forwarded-For", chain)]);
        if status != expected {
            failures.push(format!("HTTP door x-forwarded-for {chain:?}: {status} not {expected}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A peer that is not a trusted proxy cannot set the client address with `x-forwarded-for`,
/// whatever `trusted_proxy_hops` says: it is the client itself.
#[test]

fn forwarded_for_from_an_untrusted_http_peer_is_ignored() {
    let policies = policy_dir(INTERNAL_ONLY);
    let mut failures = Vec::new();
    for hops in [0, 1, 2] {
        let settings = format!("trusted_proxy_hops: {hops}\ntrusted_proxies: [192.0.2.0/24]\n");
        let server = Server::with_http_door(policies.path(), "envoy", &settings);
        for chain in ["10.0.0.1", "10.0.0.1, 10.0.0.2", "10.9.9.9, 10.0.0.1, 10.0.0.2"] {
            let (status, _, _) = http_request(server.http, "GET", "/", &[("X-Forwarded-For", chain)]);
            if status != 403 {
                failures.push(format!("hops {hops}, x-forwarded-for {chain:?}: {status}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Header limits and output headers
// ---------------------------------------------------------------------------------------------

/// Header names and values at and over the limits, and thousands of headers: each gets its
/// promised answer (a decision, 431, 400, or 401 for a token over `max_token_bytes`), and the
/// server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_get_a_clean_answer() {
    let policies = policy_dir(&door_policies());
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let many = |count: usize, size: usize| -> String {
        (0..count).map(|index| format!("x-h{index}: {}\r\n", "v".repeat(size))).collect()
    };
    let token_over_limit = format!("Bearer {}.{}.{}", "a".repeat(8192), "b".repeat(100), "c".repeat(100));
    // (name, headers, the promised answer: a decision within the HTTP stack's bounds, 431 over
    // them, 400 for a malformed header, 401 for a token over `max_token_bytes`)
    let cases: Vec<(&str, String, u16)> = vec![
        ("90 headers", many(90, 100), 200),
        ("1 000 headers", many(1000, 10), 431),
        ("5 000 headers", many(5000, 10), 431),
        ("a value of 8 KiB", format!("x-big: {}\r\n", "v".repeat(8 * 1024)), 200),
        ("a value of 64 KiB", format!("x-big: {}\r\n", "v".repeat(64 * 1024)), 200),
        ("a value of 1 MiB", format!("x-big: {}\r\n", "v".repeat(1024 * 1024)), 431),
        ("a name of 64 KiB", format!("x-{}: v\r\n", "n".repeat(64 * 1024)), 431),
        ("a token over max_token_bytes", format!("Authorization: {token_over_limit}\r\n"), 401),
        ("an empty name", ": v\r\n".into(), 400),
        ("a name with a space", "x bad: v\r\n".into(), 400),
        ("obs-fold", "x-folded: a\r\n b\r\n".into(), 400),
    ];
    let mut failures = Vec::new();
    for (name, headers, expected) in &cases {
        let (status, _, _) = raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", headers));
        if status != *expected {
            failures.push(format!("{name}: status {status}, not {expected}"));
        }
        let (alive, _, _) = raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", ""));
        if alive != 200 {
            failures.push(format!("after {name}: a plain request got {alive}"));
        }
    }
    // The gRPC door: thousands of headers are decided; a message over the size limit is refused.
    let mut client = server.grpc_client().await;
    let headers: HashMap<String, String> = (0..10_000).map(|index| (format!("x-h{index}"), "v".repeat(20))).collect();
    let response = client.check(grpc_check_request("adv", "/public/x", headers)).await.expect("decided").into_inner();
    if proxy_answer(&response).0 != 200 {
        failures.push(format!("gRPC with 10 000 headers: {}", proxy_answer(&response).0));
    }
    let headers = HashMap::from([("authorization".to_string(), token_over_limit)]);
    let response = client.check(grpc_check_request("adv", "/public/x", headers)).await.expect("decided").into_inner();
    if proxy_answer(&response).0 != 401 {
        failures.push(format!("gRPC with a token over max_token_bytes: {}, not 401", proxy_answer(&response).0));
    }
    let huge = HashMap::from([("x-big".to_string(), "v".repeat(5 * 1024 * 1024))]);
    if client.check(grpc_check_request("adv", "/public/x", huge)).await.is_ok() {
        failures.push("gRPC message of 5 MiB: accepted".into());
    }
    let mut client = server.grpc_client().await;
    let response = client.check(grpc_check_request("adv", "/admin", HashMap::new())).await.expect("alive").into_inner();
    if proxy_answer(&response).0 != 403 {
        failures.push(format!("gRPC after the big message: {}", proxy_answer(&response).0));
    }
    assert_eq!(http_get(server.admin, "/healthz").0, 200);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Claims with CR, LF, NUL or other control bytes never reach an output header; the service
/// gets no client copy either: the header is then stripped instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_with_control_characters_never_reach_output_headers() {
    let policies = policy_dir(&door_policies());
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let mut client = server.grpc_client().await;
    let mut failures = Vec::new();
    for evil in [
        "alice\r\nx-admin: true",
        "alice\n",
        "alice\r",
        "alice\u{0}",
        "alice\u{1}",
        "alice\u{7f}",
        "alice\u{1b}[31m",
        "alice\u{b}",
    ] {
        let mut claims = claims("alice");
        claims["preferred_username"] = json!(evil);
        let token = sign(RSA, Algorithm::RS256, Some("rsa"), &claims);
        let authorization = format!("Authorization: Bearer {token}\r\nX-User: admin\r\n");
        let (status, head, _) = raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", &authorization));
        let removed = header_in(&head, "x-envoy-auth-headers-to-remove").unwrap_or_default();
        let set = header_in(&head, "x-user");
        let stripped = removed.split(',').any(|name| name.trim() == "x-user");
        if status != 200 || !(stripped || set == Some("alice")) {
            failures.push(format!("HTTP door {evil:?}: status {status}, x-user {set:?}, to remove {removed:?}"));
        }
        let headers =
            HashMap::from([("authorization".to_string(), bearer(&token)), ("x-user".to_string(), "admin".to_string())]);
        let response =
            client.check(grpc_check_request("adv", "/public/x", headers)).await.expect("decided").into_inner();
        let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
            failures.push(format!("gRPC {evil:?}: not allowed"));
            continue;
        };
        let set_values: Vec<&str> =
            ok.headers.iter().filter_map(|option| option.header.as_ref()).map(|header| header.value.as_str()).collect();
        if set_values.iter().any(|value| value.bytes().any(|byte| (byte < 0x20 && byte != b'\t') || byte == 0x7f)) {
            failures.push(format!("gRPC {evil:?}: a control byte in a header to set: {set_values:?}"));
        }
        let user_set =
            ok.headers.iter().filter_map(|option| option.header.as_ref()).any(|header| header.key == "x-user");
        if !user_set && !ok.headers_to_remove.iter().any(|name| name == "x-user") {
            failures.push(format!("gRPC {evil:?}: x-user neither set nor removed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Client-supplied copies of every output header, in any letter case, are overwritten or
/// stripped: anonymous, verified, and when a claim is missing.
#[test]
fn client_copies_of_every_output_header_are_overwritten_or_stripped() {
    let policies = policy_dir(&door_policies());
    let server = Server::with_http_door(policies.path(), "envoy", "");
    let smuggled = "X-User: admin\r\nx-TENANT: evil\r\nX-Jwt-Payload: eyJzdWIiOiJhZG1pbiJ9\r\n";
    let mut without_tenant = claims("alice");
    without_tenant.as_object_mut().expect("object").remove("tenant");
    let cases = [
        ("anonymous", String::new()),
        (
            "verified",
            format!("Authorization: Bearer {}\r\n", sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice"))),
        ),
        (
            "verified, no tenant claim",
            format!("Authorization: Bearer {}\r\n", sign(RSA, Algorithm::RS256, Some("rsa"), &without_tenant)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, authorization) in &cases {
        let (status, head, _) =
            raw_http(server.http, &envoy_mode_request(b"/public/x", "adv", &format!("{authorization}{smuggled}")));
        if status != 200 {
            failures.push(format!("{name}: status {status}"));
            continue;
        }
        let removed: Vec<&str> =
            header_in(&head, "x-envoy-auth-headers-to-remove").unwrap_or_default().split(',').map(str::trim).collect();
        for output in ["x-user", "x-tenant", "x-jwt-payload"] {
            let value = header_in(&head, output);
            let safe = match value {
                Some(value) => !["admin", "evil", "eyJzdWIiOiJhZG1pbiJ9"].contains(&value),
                None => removed.contains(&output),
            };
            if !safe {
                failures.push(format!("{name}: {output} = {value:?}, to remove {removed:?}"));
            }
        }
        if !authorization.is_empty() && !removed.contains(&"authorization") {
            failures.push(format!("{name}: the token is not stripped: {removed:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

fn policy_with_operation(operation: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: n}}\nspec:\n  rules:\n  - to:\n    - operation:\n        {operation}\n"
    )
}

/// Runs `load_policy_text` on a thread with the 2 MiB stack that Tokio's blocking threads (where
/// reloads run) have; returns its errors as `line: message`. A generous deadline guards against
/// a hang (it fails the case, it measures nothing).
fn compile_errors(text: String) -> Result<Vec<(u64, String)>, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let errors = match load_policy_text("case.yaml", &text) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.into_iter().map(|error| (error.line, error.message)).collect(),
            };
            let _ = sender.send(errors);
        })
        .expect("thread");
    match receiver.recv_timeout(Duration::from_secs(60)) {
        Ok(errors) => Ok(errors),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err("compilation panicked".to_string()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err("compilation hung for 60 s".to_string()),
    }
}

/// Deeply nested flow and block YAML, in a typed field and under the ignored `status`, is a
/// located error or ignored, never a stack overflow.
#[test]
fn deeply_nested_yaml_is_a_located_error() {
    let head =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec: {}\n";
    for depth in [200, 10_000, 100_000] {
        let sequences = format!("{}\"/x\"{}", "[".repeat(depth), "]".repeat(depth));
        let mappings = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
        for (shape, nested) in [("flow sequences", &sequences), ("flow mappings", &mappings)] {
            let in_paths = compile_errors(policy_with_operation(&format!("paths: {nested}")))
                .unwrap_or_else(|problem| panic!("{shape} x{depth} in paths: {problem}"));
            assert!(!in_paths.is_empty(), "{shape} x{depth} in paths: accepted");
            assert!(in_paths.iter().all(|(line, _)| *line == 8), "{shape} x{depth} in paths: {in_paths:?}");
            let in_status = compile_errors(format!("{head}status: {nested}\n"))
                .unwrap_or_else(|problem| panic!("{shape} x{depth} in status: {problem}"));
            assert!(in_status.iter().all(|(line, _)| *line == 5), "{shape} x{depth} in status: {in_status:?}");
        }
    }
    let mut block = format!("{head}status:\n");
    for level in 0..5_000 {
        block.push_str(&format!("{}k{level}:\n", " ".repeat(2 + level)));
    }
    let errors = compile_errors(block).expect("block nesting compiles or fails cleanly");
    assert!(errors.iter().all(|(line, _)| *line >= 5), "{errors:?}");
}

/// A file over the size limit is refused unread, with its name; a large file under it is
/// compiled or refused within the time bound.
#[test]
fn huge_policy_files_are_refused_or_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let over = dir.path().join("over.yaml");
    let file = std::fs::File::create(&over).expect("create");
    file.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
    let errors = load_policies(std::slice::from_ref(&over)).expect_err("refused");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("over the limit"), "{}", errors[0]);
    assert!(errors[0].to_string().starts_with(&over.display().to_string()), "{}", errors[0]);

    let paths: Vec<String> = (0..60_000).map(|index| format!("\"/p{index}\"")).collect();
    let big = policy_with_operation(&format!("paths: [{}]", paths.join(", ")));
    assert!(u64::try_from(big.len()).expect("a length") < MAX_FILE_BYTES);
    let errors = compile_errors(big).expect("a big policy within the bound");
    assert!(errors.is_empty(), "{errors:?}");

    let documents: String = (0..1_000)
        .map(|index| format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{index}, namespace: n}}\nspec:\n  action: DENY\n  rules: [{{to: [{{operation: {{paths: [\"/x{index}\"]}}}}]}}]\n"))
        .collect();
    let errors = compile_errors(documents).expect("many documents within the bound");
    assert!(errors.is_empty(), "{errors:?}");
    let long_string = policy_with_operation(&format!("paths: [\"/{}\"]", "a".repeat(7 * 1024 * 1024)));
    let errors = compile_errors(long_string).expect("a 7 MiB string within the bound");
    assert!(errors.iter().all(|(line, _)| *line == 8), "{errors:?}");
}

/// A key given twice is a located error: the policy never silently means one of them.
#[test]
fn duplicate_keys_are_located_errors() {
    let paths_twice = policy_with_operation("paths: [\"/a\"]\n        paths: [\"/admin\"]");
    let cases = [
        (
            "action twice",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  action: DENY\n  action: ALLOW\n  rules: [{}]\n",
            6,
        ),
        (
            "name twice",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: n\n  name: q\nspec: {}\n",
            6,
        ),
        ("paths twice", paths_twice.as_str(), 9),
        (
            "kind twice",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nkind: ConfigMap\nmetadata: {name: p, namespace: n}\n",
            3,
        ),
        (
            "flow mapping",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n, namespace: m}\nspec: {}\n",
            3,
        ),
    ];
    let mut failures = Vec::new();
    for (name, text, line) in cases {
        let errors = compile_errors(text.to_string()).unwrap_or_else(|problem| vec![(0, problem)]);
        if !errors.iter().any(|(at, message)| *at == line && message.contains("duplicate")) {
            failures.push(format!("{name}: expected a duplicate-key error at line {line}, got {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Wrong types anywhere are located errors, never coerced into a rule that means something else.
#[test]
fn wrong_types_are_located_errors() {
    let cases = [
        ("paths as a string", policy_with_operation("paths: /admin"), 8),
        ("paths as a mapping", policy_with_operation("paths: {a: /admin}"), 8),
        ("ports as a list of lists", policy_with_operation("ports: [[80]]"), 8),
        ("a null path", policy_with_operation("paths: [~]"), 8),
        (
            "rules as a string",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  rules: everything\n".into(),
            5,
        ),
        (
            "action as a list",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  action: [DENY]\n  rules: [{}]\n".into(),
            5,
        ),
        (
            "matchLabels as a list",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  selector:\n    matchLabels: [app]\n".into(),
            6,
        ),
        (
            "when values as a mapping",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  rules:\n  - when:\n    - key: request.headers[x]\n      values: {a: b}\n".into(),
            8,
        ),
        ("a document that is a list", "- apiVersion: security.istio.io/v1\n- kind: AuthorizationPolicy\n".into(), 1),
        ("a document that is a string", "\"apiVersion: security.istio.io/v1\"\n".into(), 1),
    ];
    let mut failures = Vec::new();
    for (name, text, line) in cases {
        let errors = compile_errors(text).unwrap_or_else(|problem| vec![(0, problem)]);
        if !errors.iter().any(|(at, _)| *at == line) {
            failures.push(format!("{name}: expected an error at line {line}, got {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------------------------

/// A key that resembles the real one, or a key presented in an odd way, is never let in as the
/// bot: its digest finds nothing, two credentials are refused, and the key's header is stripped
/// from every answer. Decided in-process with the core's plan, key table and authorize.
#[test]
fn api_keys_that_resemble_a_real_one_or_come_oddly_are_never_let_in_as_the_bot() {
    const KEY: &str = "pk_live_4f9a2c7e1b8d";
    let locations = [
        ApiKeyLocation { header: "authorization".into(), prefix: "APIKey ".into() },
        ApiKeyLocation { header: "x-api-key".into(), prefix: "".into() },
    ];
    let options = EngineOptions { api_key_locations: locations.into(), ..EngineOptions::default() };
    let mut yaml = request_authentication("adv", &[(ISSUER, rsa_keys())]);
    yaml.push_str(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: the-bot, namespace: adv}\nspec:\n  rules:\n  - from: [{source: {requestPrincipals: [apikeys/ci-bot]}}]\n",
    );
    let loaded = load_policy_text("adversarial.yaml", &yaml).unwrap_or_else(|errors| panic!("policies: {errors:?}"));
    let snapshot = Snapshot::new(loaded.policies, loaded.authn, WorkloadTable::default(), options, "istio-system");
    let mut table = ApiKeyTable::new("apikeys");
    table.insert(
        KeyDigest::of(KEY),
        ApiKeyEntry { principal: "ci-bot".into(), claims: Default::default(), expires_at: None },
    );
    let token = bearer(&sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice")));
    let upper = KEY.to_ascii_uppercase();
    let (start, longer, nul) = (&KEY[..KEY.len() - 1], format!("{KEY}0"), format!("{KEY}\0"));
    let (scheme, lower_scheme, bearer_scheme) =
        (format!("APIKey {KEY}"), format!("apikey {KEY}"), format!("Bearer {KEY}"));
    let (blanks, other_scheme) = (format!(" \t{KEY} "), format!("Basic {KEY}"));
    let unknown = Some(JwtError::ApiKeyUnknown);
    /// The case, the request's headers, whether it is allowed, its refusal, the key headers stripped.
    type Row<'r> = (&'r str, Vec<(&'r str, &'r str)>, bool, Option<JwtError>, &'r [&'r str]);
    let rows: Vec<Row<'_>> = vec![
        ("the key", vec![("x-api-key", KEY)], true, None, &["x-api-key"]),
        ("the key under its scheme", vec![("authorization", &scheme)], true, None, &["authorization"]),
        ("the scheme in another case", vec![("authorization", &lower_scheme)], true, None, &["authorization"]),
        ("blanks around the key", vec![("x-api-key", &blanks)], true, None, &["x-api-key"]),
        ("the key but its last character", vec![("x-api-key", start)], false, unknown, &["x-api-key"]),
        ("the key and one more character", vec![("x-api-key", &longer)], false, unknown, &["x-api-key"]),
        ("the key in upper case", vec![("x-api-key", &upper)], false, unknown, &["x-api-key"]),
        ("the key and a NUL", vec![("x-api-key", &nul)], false, unknown, &["x-api-key"]),
        ("an empty key", vec![("x-api-key", "")], false, unknown, &["x-api-key"]),
        ("a key of blanks", vec![("x-api-key", "  ")], false, unknown, &["x-api-key"]),
        ("the scheme and no key", vec![("authorization", "APIKey ")], false, unknown, &["authorization"]),
        ("the header repeated", vec![("x-api-key", KEY), ("x-api-key", KEY)], false, unknown, &["x-api-key"]),
        ("another key after it", vec![("x-api-key", KEY), ("x-api-key", "x")], false, unknown, &["x-api-key"]),
        (
            "the key in both headers",
            vec![("authorization", &scheme), ("x-api-key", KEY)],
            false,
            unknown,
            &["authorization", "x-api-key"],
        ),
        (
            "the key beside a bearer token",
            vec![("authorization", &token), ("x-api-key", KEY)],
            false,
            Some(JwtError::SeveralCredentials),
            &["x-api-key"],
        ),
        (
            "the key beside a token that is not one",
            vec![("authorization", "Bearer a.b.c"), ("x-api-key", KEY)],
            false,
            Some(JwtError::SeveralCredentials),
            &["x-api-key"],
        ),
        ("the key as a bearer token", vec![("authorization", &bearer_scheme)], false, Some(JwtError::BadFormat), &[]),
        ("the key under another scheme", vec![("authorization", &other_scheme)], false, None, &[]),
        ("no key", vec![], false, None, &[]),
    ];
    let mut failures = Vec::new();
    for (case, headers, allowed, refusal, stripped) in rows {
        let extensions = HashMap::from([("namespace".to_string(), "adv".to_string())]);
        let request = get_request(&extensions, "app.test", "/", headers);
        let plan = snapshot.plan(&request);
        let presented = plan.api_key().map(|key| table.authenticate(key, snapshot.kept_claims(), unix_now()));
        let decision = match plan.credentials() {
            Some(credentials) => {
                let resolved = credentials.authenticate(&context());
                snapshot.authorize(plan, Some(resolved))
            }
            None => snapshot.authorize(plan, presented),
        };
        // The token rule's output headers are stripped from every answer too; only the key's are looked at.
        let key_headers = decision.headers_to_remove.iter().map(|name| &**name);
        let key_headers: Vec<&str> = key_headers.filter(|name| ["authorization", "x-api-key"].contains(name)).collect();
        let seen = (decision.is_allow(), decision.jwt_error, key_headers);
        if seen != (allowed, refusal, stripped.to_vec()) {
            failures.push(format!("{case}: got {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Opaque tokens (introspection)
// ---------------------------------------------------------------------------------------------

/// An opaque bearer token goes to introspection and a JWT to its rule, never both; an opaque
/// token beside another credential is refused before either is read, and the token's header is
/// stripped from every answer. Decided in-process with the core's plan, the identity an active
/// answer gives, and authorize.
#[test]
fn opaque_tokens_are_told_from_jwts_and_never_stand_beside_another_credential() {
    let locations = [ApiKeyLocation { header: "x-api-key".into(), prefix: "".into() }];
    let options = EngineOptions {
        api_key_locations: locations.into(),
        introspection_issuers: [Arc::from(OTHER_ISSUER), Arc::from(ISSUER)].into(),
        ..EngineOptions::default()
    };
    let mut yaml = request_authentication("adv", &[(ISSUER, rsa_keys())]);
    yaml.push_str(&format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: the-bot, namespace: adv}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"{ISSUER}/bot\"]}}}}]\n"
    ));
    let loaded = load_policy_text("adversarial.yaml", &yaml).unwrap_or_else(|errors| panic!("policies: {errors:?}"));
    let snapshot = Snapshot::new(loaded.policies, loaded.authn, WorkloadTable::default(), options, "istio-system");
    let jwt = bearer(&sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice")));
    let query_jwt = format!("/?access_token={}", sign(RSA, Algorithm::RS256, Some("rsa"), &claims("alice")));
    let several = Some(JwtError::SeveralCredentials);
    /// The case, the path, the headers, the token introspected (and its provider), allowed, refusal.
    type Row<'r> = (&'r str, &'r str, Vec<(&'r str, &'r str)>, Option<(&'r str, &'r str)>, bool, Option<JwtError>);
    let rows: Vec<Row<'_>> = vec![
        ("an opaque token", "/", vec![("authorization", "Bearer opaque-1")], Some(("opaque-1", ISSUER)), true, None),
        ("a JWT", "/", vec![("authorization", &jwt)], None, false, None),
        (
            "an opaque token and an API key",
            "/",
            vec![("authorization", "Bearer o"), ("x-api-key", "k")],
            None,
            false,
            several,
        ),
        (
            "an opaque token and a JWT in the query",
            &query_jwt,
            vec![("authorization", "Bearer o")],
            None,
            false,
            several,
        ),
        (
            "two opaque tokens",
            "/",
            vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
            None,
            false,
            several,
        ),
        (
            "an opaque token and a JWT",
            "/",
            vec![("authorization", "Bearer a"), ("authorization", &jwt)],
            None,
            false,
            several,
        ),
    ];
    let mut failures = Vec::new();
    for (case, path, headers, introspected, allowed, refusal) in rows {
        let extensions = HashMap::from([("namespace".to_string(), "adv".to_string())]);
        let request = get_request(&extensions, "app.test", path, headers);
        let plan = snapshot.plan(&request);
        let opaque = plan.opaque_token().map(|opaque| (opaque.token.to_string(), opaque.issuer.to_string()));
        let answer = json!({"active": true, "sub": "bot", "iss": ISSUER});
        let resolved = match (plan.opaque_token(), plan.credentials()) {
            (Some(opaque), _) => {
                Some(identity_from_answer(&answer, &opaque.issuer, snapshot.kept_claims(), unix_now()))
            }
            (None, Some(credentials)) => Some(credentials.authenticate(&context())),
            (None, None) => None,
        };
        let decision = snapshot.authorize(plan, resolved);
        let stripped = decision.headers_to_remove.iter().any(|name| &**name == "authorization");
        let seen = (opaque, decision.is_allow(), decision.jwt_error, stripped);
        let expected = (introspected.map(|(token, issuer)| (token.into(), issuer.into())), allowed, refusal, true);
        if seen != expected {
            failures.push(format!("{case}: got {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
