//! `portcullis validate` and `portcullis check` run as a user runs them: exit codes, located errors, JSON decisions.

#![expect(clippy::expect_used, reason = "test helpers: a failed step fails the test")]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{make_fifo, output_within, portcullis, repo_path};

/// How long one `portcullis` command may run before the test fails (a hang guard).
const PROCESS_BOUND: Duration = Duration::from_secs(60);

fn run(args: &[&str], paths: &[&Path]) -> Output {
    output_within(portcullis().args(args).args(paths), PROCESS_BOUND)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `portcullis validate` on a directory holding `yaml` as `file_name`: the file's path as the
/// errors show it, and the command's output.
fn validate_one_file(file_name: &str, yaml: &str) -> (String, Output) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(file_name);
    std::fs::write(&file, yaml).expect("write");
    let output = run(&["validate", "--policies"], &[dir.path()]);
    (file.display().to_string(), output)
}

#[test]
fn validate_accepts_the_shipped_policies() {
    let output = run(&["validate", "--policies"], &[&repo_path("policies")]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(
            "valid: 5 files: 6 AuthorizationPolicies (and 0 CUSTOM), 1 RequestAuthentications, 2 DataSources"
        ),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn validate_reports_every_problem_with_file_and_line() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0/8\"]\n    to:\n    - operation:\n        ports: [\"http\"]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: n}\nspec:\n  rules:\n  - to:\n    - operation:\n        pathz: [\"/x\"]\n";
    let (shown, output) = validate_one_file("policies.yaml", policy);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "stderr:\n{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{shown}:8: authorization policy `n/a`: spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR `10.0.0/8`"
        )),
        "{stderr}"
    );
    assert!(lines[1].starts_with(&format!("{shown}:11: ")) && lines[1].contains("invalid port `http`"), "{stderr}");
    assert!(lines[2].starts_with(&format!("{shown}:20: unknown field `pathz`")), "{stderr}");
}

#[test]
fn validate_accepts_a_jwt_rule_with_a_jwks_uri_and_no_issuer_as_istio_does() {
    let policy = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: any, namespace: n}\nspec:\n  jwtRules:\n  - jwksUri: https://idp.example/keys\n  - issuer: https://partner.example\n    jwksUri: https://partner.example/keys\n";
    let (_, output) = validate_one_file("authn.yaml", policy);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    assert!(text(&output.stdout).contains("1 RequestAuthentications"), "{}", text(&output.stdout));
}

#[test]
fn validate_reports_a_missing_path() {
    let output = run(&["validate", "--policies", "/nonexistent/policies"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).starts_with("/nonexistent/policies: cannot read:"), "{}", text(&output.stderr));
}

fn check(request: &str) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("request.yaml");
    std::fs::write(&file, request).expect("write");
    let output = run(&["check", "--policies"], &[&repo_path("policies"), Path::new("--request"), &file]);
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code(), json, text(&output.stderr))
}

#[test]
fn check_prints_an_allow_as_json_and_exits_0() {
    let (code, json, _) =
        check("method: GET\npath: /api/jobs\ncontext_extensions: {namespace: job-service, app: job-service}\n");
    assert_eq!(code, Some(0));
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["status"], 200);
    assert_eq!(json["policy"], "ns[job-service]-policy[job-service]-rule[0]");
}

#[test]
fn check_prints_a_deny_and_exits_1() {
    let (code, json, _) = check(
        r#"{"method": "DELETE", "path": "/api/jobcategories/1", "context_extensions": {"namespace": "job-service", "app": "job-service"}}"#,
    );
    assert_eq!(code, Some(1));
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["status"], 403);
    assert_eq!(json["reason"], "no_allow_match");
    assert_eq!(json["body"], "RBAC: access denied");
}

#[test]
fn check_prints_the_deny_of_a_request_whose_workload_nothing_names() {
    let (code, json, _) = check("method: GET\npath: /api/jobs\nhost: unlisted.example.com\n");
    assert_eq!(code, Some(1));
    assert_eq!(
        (&json["decision"], &json["status"], &json["reason"]),
        (&"deny".into(), &403.into(), &"unknown_workload".into())
    );
    assert_eq!(json["body"], "RBAC: access denied");
}

#[test]
fn check_exits_2_on_a_bad_request_file() {
    let (code, json, stderr) = check("method: GET\npathh: /x\n");
    assert_eq!(code, Some(2));
    assert_eq!(json, serde_json::Value::Null);
    assert!(stderr.contains(":2: unknown field `pathh`"), "{stderr}");
}

#[test]
fn validate_skips_other_kinds_and_peer_authentication_with_their_reasons() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mixed.yml");
    let mixed = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec: {}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    std::fs::write(&file, mixed).expect("write");
    let output = run(&["validate", "--policies"], &[&file]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let shown = file.display();
    let warnings = [
        format!("{shown}:1: warning: skipped `v1/ConfigMap`: not an Istio security policy"),
        format!("{shown}:10: warning: skipped `apps/v1/Deployment`: not an Istio security policy"),
        format!(
            "{shown}:14: warning: skipped `security.istio.io/v1/PeerAuthentication`: mutual TLS is enforced by the mesh's proxies, not evaluated here"
        ),
    ];
    assert_eq!(text(&output.stderr).trim(), warnings.join("\n"));
    assert!(
        text(&output.stdout).contains(
            "valid: 1 files: 1 AuthorizationPolicies (and 0 CUSTOM), 0 RequestAuthentications, 0 DataSources"
        )
    );
}

#[test]
fn validate_refuses_a_misspelled_istio_kind_naming_the_known_kinds_and_the_closest() {
    let guard = "apiVersion: security.istio.io/v1\nkind: AuthorisationPolicy\nmetadata: {name: guard, namespace: n}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n";
    let (shown, output) = validate_one_file("guard.yaml", guard);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "a policy that would be skipped fails validation:\n{stderr}");
    let expected = format!(
        "{shown}:2: unknown kind `AuthorisationPolicy` of `security.istio.io`; known kinds: AuthorizationPolicy, PeerAuthentication, RequestAuthentication; did you mean `AuthorizationPolicy`?"
    );
    assert_eq!(stderr.trim(), expected);
}

#[test]
fn validate_refuses_a_fifo_and_a_symlink_to_dev_zero_promptly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: n}\nspec: {}\n";
    std::fs::write(dir.path().join("good.yaml"), good).expect("write");
    make_fifo(&dir.path().join("pipe.yaml"));
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).expect("symlink");
    let output = output_within(portcullis().args(["validate", "--policies"]).arg(dir.path()), PROCESS_BOUND);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let shown = dir.path().display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{shown}/pipe.yaml: not a regular file (fifo)"),
            format!("{shown}/zero.yaml: not a regular file (character device)"),
        ],
        "{stderr}"
    );
}

#[test]
fn print_config_shows_flags_over_environment_over_file_over_defaults() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        file.path(),
        "grpc_listen: 127.0.0.1:1111\nhttp_listen: 127.0.0.1:2222\nclock_skew_secs: 5\nroot_namespace: from-file\n",
    )
    .expect("write");
    let output = output_within(
        portcullis()
            .args(["serve", "--print-config", "--config"])
            .arg(file.path())
            .args(["--grpc-listen", "127.0.0.1:3333"])
            .env("PORTCULLIS_GRPC_LISTEN", "127.0.0.1:4444")
            .env("PORTCULLIS_HTTP_LISTEN", "127.0.0.1:5555")
            .env("PORTCULLIS_CLOCK_SKEW_SECS", "30")
            .env("PORTCULLIS_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1")
            .env("PORTCULLIS_DRY_RUN", "true"),
        PROCESS_BOUND,
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let settings: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(settings["grpc_listen"], "127.0.0.1:3333", "a flag beats the environment");
    assert_eq!(settings["http_listen"], "127.0.0.1:5555", "the environment beats the file");
    assert_eq!(settings["clock_skew_secs"], 30);
    assert_eq!(settings["root_namespace"], "from-file", "the file beats the defaults");
    assert_eq!(settings["admin_listen"], "127.0.0.1:9090", "the default: the admin door on loopback");
    assert_eq!(settings["trusted_proxies"], serde_json::json!(["10.0.0.0/8", "192.168.0.1"]));
    assert_eq!(settings["dry_run"], true);
    assert_eq!(settings["http_mode"], serde_json::Value::Null, "no dialect unless one is named");
    assert_eq!(settings["http_header_read_timeout_ms"], 10_000);
    assert_eq!(settings["http_idle_timeout_secs"], 60);
    assert_eq!(settings["http_max_connections"], 4096);

    let bad = output_within(
        portcullis().args(["serve", "--print-config"]).env("PORTCULLIS_CLOCK_SKEW_SECS", "soon"),
        PROCESS_BOUND,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("PORTCULLIS_"), "{}", text(&bad.stderr));

    let pinned = output_within(
        portcullis().args(["serve", "--print-config"]).env("PORTCULLIS_HTTP_MODE", "ingress-nginx"),
        PROCESS_BOUND,
    );
    let settings: serde_json::Value = serde_json::from_slice(&pinned.stdout).expect("JSON");
    assert_eq!(settings["http_mode"], "ingress-nginx");
    let zero = output_within(
        portcullis().args(["serve", "--print-config"]).env("PORTCULLIS_HTTP_MAX_CONNECTIONS", "0"),
        PROCESS_BOUND,
    );
    assert_eq!(zero.status.code(), Some(1));
    assert!(text(&zero.stderr).contains("http_max_connections must be at least 1"), "{}", text(&zero.stderr));
}

#[test]
fn an_invalid_environment_value_names_its_variable() {
    for (variable, value) in [
        ("PORTCULLIS_CLOCK_SKEW_SECS", "soon"),
        ("PORTCULLIS_GRPC_LISTEN", "nowhere"),
        ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1"),
        ("PORTCULLIS_DRY_RUN", "maybe"),
    ] {
        let output = portcullis().args(["serve", "--print-config"]).env(variable, value).output().expect("runs");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{variable}: {stderr}");
        assert!(stderr.contains(&format!("environment variable `{variable}`")), "{variable}: {stderr}");
    }
}

#[test]
fn an_unknown_portcullis_variable_is_a_warning_that_names_the_closest_known_one() {
    let validate_shipped = |variables: [(&str, &str); 2]| {
        portcullis().args(["validate", "--policies"]).arg(repo_path("policies")).envs(variables).output().expect("runs")
    };
    let output = validate_shipped([("PORTCULLIS_CLOK_SKEW_SECS", "30"), ("PORTCULLIS_NOTHING_LIKE_IT", "1")]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "a warning, not an error: {stderr}");
    assert!(
        stderr.contains(
            "unknown variable `PORTCULLIS_CLOK_SKEW_SECS` ignored; did you mean `PORTCULLIS_CLOCK_SKEW_SECS`?"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("unknown variable `PORTCULLIS_NOTHING_LIKE_IT` ignored\n"), "{stderr}");
    let known = validate_shipped([("PORTCULLIS_CONFIG", "/dev/null"), ("PORTCULLIS_DRY_RUN", "false")]);
    assert!(!text(&known.stderr).contains("unknown variable"), "{}", text(&known.stderr));
}

#[test]
fn serve_help_shows_every_default() {
    let help = portcullis().args(["serve", "--help"]).output().expect("runs");
    let help = text(&help.stdout);
    let defaults = portcullis().args(["serve", "--print-config"]).output().expect("runs");
    let defaults: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&defaults.stdout).expect("JSON settings");
    for (key, value) in defaults {
        let shown = if value.is_null() { "unset".to_string() } else { value.to_string() };
        assert!(help.contains(&format!("  {key}: {shown}\n")), "`{key}: {shown}` missing from\n{help}");
    }
    for flag in ["--grpc-listen", "--http-listen", "--admin-listen", "--log-format", "--log-level", "--policies"] {
        let line = help.split(flag).nth(1).and_then(|rest| rest.split("\n\n").next()).unwrap_or_default();
        assert!(line.contains("[default: "), "{flag} shows no default: {line}");
    }
    assert!(help.contains("[default: 127.0.0.1:9090]"), "{help}");
}

/// The EC key of `tests/keys/ec-p256.pem` as a private JWK.
const EC_P256_JWK: &str = "{kty: EC, crv: P-256, d: CcnKsL9jeo47C9Pf8Xnd7xguv-xdO9Q7GW1tQH0G260, x: U0sw-KVp_NCTXP7qgwsAdPqGgwlSbZIUk6Dc7eZkm18, y: OCpJecVk-nx3vNou0YMdnM3mczux_uFK63oGK78WC1U}";

fn policy_test(test_file: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, test_file).expect("write");
    let output = run(&["test", "--policies"], &[&repo_path("policies"), &file]);
    (output.status.code(), text(&output.stdout), text(&output.stderr).replace(&file.display().to_string(), "FILE"))
}

#[test]
fn test_passes_the_shipped_policy_tests() {
    let output = run(&["test", "--policies"], &[&repo_path("policies"), &repo_path("policy-tests/job-board.yaml")]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", text(&output.stderr));
    assert!(stdout.lines().take(9).all(|line| line.starts_with("PASS ")), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("9 passed, 0 failed"), "{stdout}");
}

#[test]
fn test_signs_tokens_with_an_inline_jwk_and_explains_a_failed_case_then_exits_1() {
    let cases = format!(
        "issuers:\n- issuer: http://127.0.0.1:8180/realms/jobs\n  jwk: {EC_P256_JWK}\ncases:\n- name: a user posts a job\n  request: {{method: POST, path: /api/jobs, context_extensions: {{namespace: job-service, app: job-service}}}}\n  token: {{sub: alice}}\n  expect: {{decision: allow, status: 200, reason: allowed_by_policy, policy: 'ns[job-service]-policy[job-service]-rule[1]'}}\n- name: a user deletes a category\n  request: {{method: DELETE, path: /api/jobcategories/3, context_extensions: {{namespace: job-service, app: job-service}}}}\n  token: {{sub: alice}}\n  expect: {{decision: allow}}\n"
    );
    let (code, stdout, stderr) = policy_test(&cases);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..3],
        ["PASS a user posts a job", "FAIL a user deletes a category", "  decision: expected allow, got deny"]
    );
    for why in [
        "  judged as the workload in namespace `job-service` with labels app=job-service",
        "  ALLOW job-service/job-service",
        "    rule[0]: to.operation.methods: DELETE matches none of GET",
        "    rule[1]: to.operation.paths: /api/jobcategories/3 matches none of /api/jobs*",
        "    rule[2]: when request.auth.claims[realm_access][roles]: the token has no such claim (or no string value in it)",
    ] {
        assert!(lines.contains(&why), "missing `{why}` in:\n{stdout}");
    }
    assert_eq!(lines.last(), Some(&"1 passed, 1 failed"));
}

#[test]
fn test_exits_2_on_a_broken_test_file_naming_every_problem_by_line() {
    let cases = "issuers:\n- issuer: http://127.0.0.1:8180/realms/jobs\n  pem: missing.pem\ncases:\n- name: bad reason\n  request: {path: /}\n  token: {iss: http://elsewhere}\n  expect: {decision: allow, reason: allowed}\n";
    let (code, stdout, stderr) = policy_test(cases);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "no case runs: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("FILE:2: issuers[0]: `") && lines[0].contains("missing.pem`: cannot read"),
        "{stderr}"
    );
    assert!(lines[1].starts_with("FILE:5: case `bad reason`: unknown reason `allowed`"), "{stderr}");
    assert_eq!(
        lines[2],
        "FILE:5: case `bad reason`: the token's issuer `http://elsewhere` is not declared in `issuers`"
    );

    let unknown_issuer = format!(
        "issuers:\n- issuer: http://nobody\n  jwk: {EC_P256_JWK}\ncases:\n- name: c\n  request: {{path: /}}\n  expect: {{decision: maybe}}\n"
    );
    let (code, _, stderr) = policy_test(&unknown_issuer);
    assert_eq!((code, stderr.trim()), (Some(2), "FILE:7: unknown variant `maybe`, expected one of allow, deny"));
    let (code, _, stderr) = policy_test(&unknown_issuer.replace("maybe", "deny"));
    assert_eq!(
        (code, stderr.trim()),
        (Some(2), "FILE:2: issuer `http://nobody`: no RequestAuthentication rule of the policies has it")
    );
}

#[test]
fn check_explain_names_the_workload_and_each_rules_first_miss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("request.yaml");
    let request =
        "method: DELETE\npath: /api/jobcategories/3\ncontext_extensions: {namespace: job-service, app: job-service}\n";
    std::fs::write(&file, request).expect("write");
    let output = run(&["check", "--explain", "--policies"], &[&repo_path("policies"), Path::new("--request"), &file]);
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["reason"], "no_allow_match");
    let explanation: Vec<&str> =
        json["explanation"].as_array().expect("lines").iter().filter_map(serde_json::Value::as_str).collect();
    assert_eq!(
        explanation,
        [
            "judged as the workload in namespace `job-service` with labels app=job-service",
            "decision: deny (no_allow_match)",
            "DENY istio-system/deny-debug-endpoints",
            "  rule[0]: to.operation.paths: /api/jobcategories/3 matches none of /debug/*, /actuator/*, /internal/{**}",
            "ALLOW job-service/job-service",
            "  rule[0]: to.operation.methods: DELETE matches none of GET",
            "  rule[1]: from.source.requestPrincipals: the request has no token",
            "  rule[2]: from.source.requestPrincipals: the request has no token",
        ]
    );
    let plain = run(&["check", "--policies"], &[&repo_path("policies"), Path::new("--request"), &file]);
    let json: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("JSON");
    assert_eq!(json.get("explanation"), None, "computed only when asked");
}

/// A dashboard whose rule reads the caller's record in the `users` source: its policies in
/// two files (the source in one, the policy that reads it in the other).
fn dashboard_policies(dir: &Path) {
    let source = "apiVersion: portcullis.dev/v1alpha1\nkind: DataSource\nmetadata: {name: users}\nspec:\n  fields: [apps]\n  file: {path: users.json}\n";
    let policy = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: tokens, namespace: d}\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwksUri: http://127.0.0.1:9/jwks\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dashboard, namespace: d}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/apps/{app_id}\"]}}]\n    when:\n    - key: request.path.params[app_id]\n      valuesFrom:\n      - data.users[request.auth.claims[sub]].apps\n";
    std::fs::write(dir.join("a-dashboard.yaml"), policy).expect("write");
    std::fs::write(dir.join("b-users.yaml"), source).expect("write");
}

#[test]
fn test_decides_with_the_data_a_test_file_gives_and_fails_closed_without_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    dashboard_policies(dir.path());
    let cases = |data: &str| {
        format!(
            "issuers:\n- issuer: https://idp.example\n  jwk: {EC_P256_JWK}\n{data}cases:\n- name: ana opens her app\n  request: {{path: /apps/a1, context_extensions: {{namespace: d}}}}\n  token: {{sub: ana}}\n  expect: {{decision: allow, policy: 'ns[d]-policy[dashboard]-rule[0]'}}\n"
        )
    };
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let file = elsewhere.path().join("cases.yaml");
    let test = |cases: String| {
        std::fs::write(&file, cases).expect("write");
        let output = run(&["test", "--policies"], &[dir.path(), &file]);
        (output.status.code(), text(&output.stdout))
    };
    let (code, stdout) = test(cases("data:\n  users:\n  - {_id: ana, apps: [a1], secret: s3cr3t}\n"));
    assert_eq!((code, stdout.lines().next()), (Some(0), Some("PASS ana opens her app")), "{stdout}");
    let (code, stdout) = test(cases(""));
    assert_eq!(code, Some(1), "{stdout}");
    let why = "    rule[0]: when request.path.params[app_id] (valuesFrom): cannot be evaluated: data source `users` is not loaded; an ALLOW rule does not match (a DENY rule would)";
    assert!(stdout.lines().any(|line| line == why), "{stdout}");
    let (code, stdout) = test(cases("data:\n  users:\n  - {_id: bo-9z, apps: [a1], secret: s3cr3t}\n"));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("data source `users` has no record for a key the lookup reads"), "{stdout}");
    assert!(!stdout.contains("s3cr3t") && !stdout.contains("bo-9z"), "no record contents: {stdout}");
}

#[test]
fn validate_checks_lookups_against_the_sources_of_every_file_and_locates_a_misuse_in_the_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    dashboard_policies(dir.path());
    let output = run(&["validate", "--policies"], &[dir.path()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let misspelled =
        std::fs::read_to_string(dir.path().join("a-dashboard.yaml")).expect("read").replace("data.users", "data.user");
    std::fs::write(dir.path().join("a-dashboard.yaml"), misspelled).expect("write");
    let output = run(&["validate", "--policies"], &[dir.path()]);
    assert_eq!(output.status.code(), Some(1));
    let shown = dir.path().join("a-dashboard.yaml").display().to_string();
    let stderr = text(&output.stderr);
    let expected = format!(
        "{shown}:18: authorization policy `d/dashboard`: spec.rules[0].when[0].valuesFrom[0]: unknown data source `user` (declared: users)"
    );
    assert_eq!(stderr.lines().next(), Some(expected.as_str()), "{stderr}");
}
