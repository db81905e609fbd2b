//! Property tests: path normalization is idempotent, DENY decisions survive every equivalent spelling of a path, matchers and YAML compilation never panic.

#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "test helpers: a failed step fails the test")]

use std::collections::HashMap;

use portcullis::config::load::load_policy_text;
use portcullis::core::authn::{AuthnContext, NoRemoteKeys};
use portcullis::core::matcher::{IpMatch, PathMatch, StringMatch};
use portcullis::core::path::{PathOptions, normalize};
use portcullis::core::workload::WorkloadTable;
use portcullis::core::{Decision, EngineOptions, HttpRequest, Reason, Request, Snapshot, StrMap};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property: `PROPTEST_CASES` overrides; failures are shrunk and printed, not saved.
fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Path pieces that normalization treats specially, and some that it does not.
fn path_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/",
        "//",
        ".",
        "..",
        "./",
        "../",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "\\",
        ";",
        ";x=1",
        "a",
        "b",
        "admin",
        "%61",
        "%7E",
        "~",
        "-",
        "_",
        "%20",
        "%25",
        "%C3%A9",
        "\u{e9}",
        "%",
        "%z",
        "%0",
        "?",
        "#",
        "?a=/..",
        "\u{0}",
        "\u{7f}",
        "\u{1f600}",
    ])
}

fn raw_path() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.9), prop::collection::vec(path_piece(), 0..24)).prop_map(|(absolute, pieces)| {
        let body: String = pieces.concat();
        if absolute { format!("/{body}") } else { body }
    })
}

proptest! {
    #![proptest_config(config(2048))]

    /// A normalized path, and each of its other readings, normalize to themselves.
    #[test]
    fn normalization_is_idempotent(raw in raw_path(), merge_slashes in any::<bool>()) {
        let options = PathOptions { merge_slashes };
        if let Ok(once) = normalize(&raw, options) {
            prop_assert!(once.path.starts_with('/'));
            let twice = normalize(&once.path, options).map(|twice| twice.path.into_owned());
            prop_assert_eq!(twice.as_deref(), Ok(&*once.path), "path of {:?}", raw);
            for other in &once.other_readings {
                let twice = normalize(other, options).map(|twice| twice.path.into_owned());
                prop_assert_eq!(twice.as_deref(), Ok(&**other), "other reading of {:?}", raw);
            }
        }
    }

    /// Any text at all: normalization answers and never panics.
    #[test]
    fn normalization_never_panics(raw in any::<String>()) {
        let _ = normalize(&raw, PathOptions::default());
        let _ = normalize(&raw, PathOptions { merge_slashes: false });
    }
}

// ---------------------------------------------------------------------------------------------
// DENY decisions under equivalent spellings.
// ---------------------------------------------------------------------------------------------

const GUARDED: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: guard, namespace: n}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*", "*/secret", "/api/{*}/internal", "/files/{**}/.env"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-some, namespace: n}
spec:
  rules:
  - to: [{operation: {paths: ["/admin/*", "/api/*", "/files/*", "/public/*", "/*"]}}]
"#;

fn guarded_snapshot() -> &'static Snapshot {
    static SNAPSHOT: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let loaded = load_policy_text("guard.yaml", GUARDED).expect("valid policies");
        Snapshot::new(loaded.policies, loaded.authn, WorkloadTable::default(), EngineOptions::default(), "istio-system")
    })
}

fn decide(path: &str) -> Decision {
    let extensions = HashMap::from([("namespace".to_string(), "n".to_string())]);
    let request = Request {
        http: Some(HttpRequest { method: "GET", scheme: "https", host: "h", path, ..HttpRequest::default() }),
        context_extensions: StrMap::from(&extensions),
        ..Request::default()
    };
    let context = AuthnContext { keys: &NoRemoteKeys, now: 1_800_000_000, clock_skew_secs: 60, max_token_bytes: 8192 };
    guarded_snapshot().check(&request, &context)
}

/// A plain path made of segments some rules guard.
fn plain_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "admin",
        "api",
        "files",
        "public",
        "secret",
        "internal",
        "users",
        "x",
        "a.env",
        "b-c",
        "d_e",
        "f~g",
        "caf%C3%A9",
    ]);
    (prop::collection::vec(segment, 1..6), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut path = format!("/{}", segments.join("/"));
        if trailing {
            path.push('/');
        }
        path
    })
}

/// One rewrite that names the same resource once normalized.
#[derive(Debug, Clone)]
enum Spelling {
    /// `%XX` (either case) for an unreserved character.
    EncodeUnreserved { at: usize, lower: bool },
    /// `\` for a `/` that is not the first.
    Backslash { at: usize },
    /// `//` for a `/`.
    DoubleSlash { at: usize },
    /// `./` (or `%2e/`) after a `/`.
    DotSegment { at: usize, encoded: bool },
    /// `x/../` (or `x/%2e%2e/`) after a `/`.
    UpAndBack { at: usize, encoded: bool },
    /// A query or a fragment.
    Suffix { fragment: bool },
}

fn spelling() -> impl Strategy<Value = Spelling> {
    prop_oneof![
        (any::<usize>(), any::<bool>()).prop_map(|(at, lower)| Spelling::EncodeUnreserved { at, lower }),
        any::<usize>().prop_map(|at| Spelling::Backslash { at }),
        any::<usize>().prop_map(|at| Spelling::DoubleSlash { at }),
        (any::<usize>(), any::<bool>()).prop_map(|(at, encoded)| Spelling::DotSegment { at, encoded }),
        (any::<usize>(), any::<bool>()).prop_map(|(at, encoded)| Spelling::UpAndBack { at, encoded }),
        any::<bool>().prop_map(|fragment| Spelling::Suffix { fragment }),
    ]
}

/// Byte offsets in `path` (before any query) where `wanted` holds, picked by `at`.
fn pick(path: &str, at: usize, wanted: impl Fn(usize, u8) -> bool) -> Option<usize> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let candidates: Vec<usize> =
        path.as_bytes()[..end].iter().enumerate().filter(|&(i, &b)| wanted(i, b)).map(|(i, _)| i).collect();
    (!candidates.is_empty()).then(|| candidates[at % candidates.len()])
}

fn apply(path: &str, spelling: &Spelling) -> String {
    let bytes = path.as_bytes();
    let is_unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    // An unreserved byte that is not part of an existing `%XX` escape.
    let escaped = |i: usize| (i >= 1 && bytes[i - 1] == b'%') || (i >= 2 && bytes[i - 2] == b'%');
    let splice = |i: usize, remove: usize, insert: &str| format!("{}{insert}{}", &path[..i], &path[i + remove..]);
    match *spelling {
        Spelling::EncodeUnreserved { at, lower } => match pick(path, at, |i, b| is_unreserved(b) && !escaped(i)) {
            Some(i) => {
                let encoded = if lower { format!("%{:02x}", bytes[i]) } else { format!("%{:02X}", bytes[i]) };
                splice(i, 1, &encoded)
            }
            None => path.to_string(),
        },
        Spelling::Backslash { at } => {
            pick(path, at, |i, b| b == b'/' && i > 0).map_or(path.to_string(), |i| splice(i, 1, "\\"))
        }
        Spelling::DoubleSlash { at } => {
            pick(path, at, |_, b| b == b'/').map_or(path.to_string(), |i| splice(i, 1, "//"))
        }
        Spelling::DotSegment { at, encoded } => pick(path, at, |_, b| b == b'/')
            .map_or(path.to_string(), |i| splice(i + 1, 0, if encoded { "%2e/" } else { "./" })),
        Spelling::UpAndBack { at, encoded } => pick(path, at, |_, b| b == b'/')
            .map_or(path.to_string(), |i| splice(i + 1, 0, if encoded { "x/%2e%2e/" } else { "x/../" })),
        Spelling::Suffix { fragment } => format!("{path}{}", if fragment { "#/admin" } else { "?x=/admin/../.." }),
    }
}

/// A DENY decision's essentials: the verdict and the policy and rule that decided.
fn essentials(decision: &Decision) -> (Reason, Option<String>) {
    (decision.reason, decision.policy.as_ref().map(ToString::to_string))
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any sequence of equivalent rewrites is decided exactly as the plain path: in particular
    /// a path a DENY rule denies stays denied.
    #[test]
    fn equivalent_spellings_get_the_same_decision(base in plain_path(), spellings in prop::collection::vec(spelling(), 1..6)) {
        let mut variant = base.clone();
        for spelling in &spellings {
            variant = apply(&variant, spelling);
        }
        let plain = essentials(&decide(&base));
        let spelled = essentials(&decide(&variant));
        prop_assert_eq!(&spelled, &plain, "{:?} spelled {:?}", base, variant);
    }

    /// Encoding a `/` as `%2F` or `%5C` names another resource for some backends and the same
    /// for others: a denied path stays denied either way.
    #[test]
    fn an_encoded_slash_never_lifts_a_deny(base in plain_path(), at in any::<usize>(), backslash in any::<bool>()) {
        let Some(i) = pick(&base, at, |i, b| b == b'/' && i > 0) else { return Ok(()) };
        let variant = format!("{}{}{}", &base[..i], if backslash { "%5C" } else { "%2F" }, &base[i + 1..]);
        let plain = decide(&base);
        let spelled = decide(&variant);
        if !plain.is_allow() {
            prop_assert!(!spelled.is_allow(), "{:?} was denied, {:?} is {:?}", base, variant, spelled.reason);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matchers and YAML.
// ---------------------------------------------------------------------------------------------

fn segment_text() -> impl Strategy<Value = String> {
    "[a-z0-9._~-]{1,8}"
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any pattern against any value: an answer, never a panic. A pattern always matches its
    /// own text, and ignoring case matches an upper-cased ASCII copy.
    #[test]
    fn string_matchers_never_panic(pattern in any::<String>(), value in any::<String>(), ascii in "[ -~]{1,16}") {
        let matcher = StringMatch::parse(&pattern);
        let _ = matcher.matches(&value);
        let _ = matcher.matches_ignore_case(&value);
        let own = StringMatch::parse(&ascii);
        prop_assert!(own.matches(&ascii), "{:?} does not match itself", ascii);
        prop_assert!(own.matches_ignore_case(&ascii.to_ascii_uppercase()), "{:?} ignoring case", ascii);
    }

    /// Any path pattern parses or is refused, and then matches or not, without a panic.
    #[test]
    fn path_matchers_never_panic(pattern in "[/a{}*.%]{0,24}", arbitrary in any::<String>(), path in raw_path()) {
        for pattern in [pattern.as_str(), arbitrary.as_str()] {
            if let Ok(matcher) = PathMatch::parse(pattern) {
                let _ = matcher.matches(&path);
                let _ = matcher.matches(pattern);
            }
        }
    }

    /// A template matches every path made by filling its `{*}` with a segment and its `{**}`
    /// with any rest.
    #[test]
    fn templates_match_the_paths_they_describe(
        parts in prop::collection::vec((any::<bool>(), segment_text()), 1..5),
        any_rest in prop::option::of(prop::collection::vec(segment_text(), 0..3)),
    ) {
        let mut template = String::new();
        let mut path = String::new();
        for (wildcard, text) in &parts {
            template.push('/');
            path.push('/');
            template.push_str(if *wildcard { "{*}" } else { text });
            path.push_str(text);
        }
        if let Some(rest) = &any_rest {
            template.push_str("/{**}");
            path.push('/');
            path.push_str(&rest.join("/"));
        }
        let matcher = PathMatch::parse(&template);
        prop_assert!(matcher.is_ok(), "{:?} does not parse: {:?}", template, matcher.err());
        if let Ok(matcher) = matcher {
            prop_assert!(matcher.matches(&path), "{:?} does not match {:?}", template, path);
        }
    }

    /// Any text is an address, a CIDR, or refused; never a panic.
    #[test]
    fn address_matchers_never_panic(text in any::<String>(), cidr in "[0-9a-f:./]{0,40}") {
        let _ = IpMatch::parse(&text);
        if let Ok(block) = IpMatch::parse(&cidr) {
            let _ = block.matches("10.1.2.3".parse().expect("address"));
            let _ = block.matches("::ffff:10.1.2.3".parse().expect("address"));
        }
    }
}

const VALID_POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: job-service
  namespace: job-service
  annotations: {istio.io/dry-run: "false"}
spec:
  selector:
    matchLabels: {app: job-service}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/web/sa/web"], notIpBlocks: ["10.0.0.0/8"]}
    to:
    - operation: {methods: ["GET"], paths: ["/api/jobs", "/api/jobs/{*}", "/files/{**}/data.json"], ports: ["8080"]}
    when:
    - key: request.auth.claims[realm_access][roles]
      values: ["admin"]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: r, namespace: job-service}
spec:
  jwtRules:
  - issuer: https://kc.example/realms/jobs
    outputClaimToHeaders: [{header: x-user, claim: preferred_username}]
"#;

/// Text that YAML reads in surprising ways.
fn yaml_noise() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "? ",
            ": ",
            "- ",
            "|",
            ">",
            "{",
            "}",
            "[",
            "]",
            ",",
            "#",
            "'",
            "\"",
            "\t",
            "\n",
            "\n  ",
            "---\n",
            "...\n",
            "~",
            "<<: *a",
            "%YAML 1.2\n",
            "\u{feff}",
            "\\u0000",
            "1e999",
            "0x1F",
            "-.inf",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text compiles or gives errors located inside it; never a panic.
    #[test]
    fn yaml_compilation_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_compiles_or_locates(&text)?;
    }

    /// A valid policy set with text spliced in anywhere compiles or gives located errors.
    #[test]
    fn yaml_compilation_never_panics_on_mutated_policies(
        edits in prop::collection::vec((any::<usize>(), 0..8usize, yaml_noise()), 1..6),
    ) {
        let mut text = VALID_POLICY.to_string();
        for (at, remove, insert) in &edits {
            let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let start = boundaries[at % boundaries.len()];
            let end = boundaries.iter().copied().filter(|&i| i >= start).nth(*remove).unwrap_or(text.len());
            text.replace_range(start..end, insert);
        }
        check_compiles_or_locates(&text)?;
    }
}

fn check_compiles_or_locates(text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count() as u64;
    match load_policy_text("fuzz.yaml", text) {
        Ok(_) => Ok(()),
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            for error in &errors {
                prop_assert!(
                    error.line >= 1 && error.line <= lines + 1,
                    "{} is outside the text's {} lines: {:?}",
                    error,
                    lines,
                    text
                );
            }
            Ok(())
        }
    }
}

#[test]
fn the_valid_policy_of_the_mutation_tests_is_valid() {
    let loaded = load_policy_text("valid.yaml", VALID_POLICY).expect("valid");
    assert_eq!((loaded.policies.len(), loaded.authn.len()), (1, 1));
    assert_eq!(decide("/admin/x").reason, Reason::DeniedByPolicy, "the guarded set denies what it should");
    assert_eq!(decide("/public/x").reason, Reason::AllowedByPolicy);
}
