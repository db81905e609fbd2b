"""Soak: mixed valid, invalid and hostile traffic against the real server, with policy reloads and a flapping IdP.

    make soak                       # 10 minutes (SOAK_SECONDS=600)
    SOAK_SECONDS=60 make soak       # a short run

Runs target/release/portcullis (PORTCULLIS_BIN overrides) and the test IdP (tests/oidc/idp.mjs)
on 127.0.0.1 only. Every request has one expected decision; the policy set is rewritten every
SOAK_RELOAD_SECONDS (10) with an equivalent set, or with a broken one that must be refused, and
the IdP's JWKS endpoint answers 503 for a while every SOAK_FLAP_SECONDS (30). At the end it
prints the request count, errors (transport failures, must be 0), wrong decisions (must be 0)
and the server's RSS after warm-up and at the end, and exits 1 if any check failed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
# The Python suites' harness (process start, ports) and the JWT suite's IdP.
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "jwt")]
from harness import http_get, start_portcullis, stop_process  # noqa: E402
from oidc_idp import Idp, start_idp  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RELOAD_SECONDS = float(os.environ.get("SOAK_RELOAD_SECONDS", "10"))
FLAP_SECONDS = float(os.environ.get("SOAK_FLAP_SECONDS", "30"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "4"))
RATE = float(os.environ.get("SOAK_RPS", "300"))  # requests per second, all workers together
WARMUP_SECONDS = min(15.0, SECONDS / 4)
# RSS may grow by this much over the run before the soak calls it a leak.
RSS_GROWTH_LIMIT_KB = int(os.environ.get("SOAK_RSS_GROWTH_KB", str(64 * 1024)))
NAMESPACE = "soak"


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# Policies: two equivalent sets, and broken ones the server must refuse.
# ---------------------------------------------------------------------------------------------


def policies(issuer: str, variant: int) -> str:
    authn = f"""apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: keycloak, namespace: {NAMESPACE}}}
spec:
  jwtRules:
  - issuer: {issuer}
    outputClaimToHeaders: [{{header: x-user, claim: preferred_username}}]
"""
    deny = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-debug-v{variant}, namespace: {NAMESPACE}}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/debug/*", "/admin/secret"]}}}}]
"""
    allow = f"""apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: jobs-v{variant}, namespace: {NAMESPACE}}}
spec:
  rules:
  - to: [{{operation: {{methods: ["GET"], paths: ["/api/*"]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    to: [{{operation: {{methods: ["POST", "PUT"], paths: ["/api/*"]}}}}]
  - to: [{{operation: {{paths: ["/admin/*"]}}}}]
    when: [{{key: "request.auth.claims[realm_access][roles]", values: ["admin"]}}]
"""
    documents = [authn, deny, allow] if variant % 2 == 0 else [allow, authn, deny]
    return f"# variant {variant}\n" + "---\n".join(documents)


BROKEN = [
    "spec: [\n  {oops\n",
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: soak}\nspec:\n  action: [DENY]\n",
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: soak}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/a/{**}/b\"]}}]\n",
]

# ---------------------------------------------------------------------------------------------
# Traffic: each kind of request and the one decision it must get.
# ---------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Tokens:
    alice: str
    admin: str
    tampered: str
    alg_none: str
    unknown_kid: str
    other_issuer: str


def fetch_tokens(idp: Idp) -> Tokens:
    alice, admin = idp.token("alice"), idp.token("admin")
    header, payload, signature = alice.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["preferred_username"] = "admin"
    forged_header = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    forged_header["kid"] = f"unknown-{random.randrange(1 << 30)}"
    other = dict(claims, iss="https://evil.example/realms/jobs")
    none_header = b64(json.dumps({"alg": "none"}).encode())
    return Tokens(
        alice=alice,
        admin=admin,
        tampered=f"{header}.{b64(json.dumps(claims).encode())}.{signature}",
        alg_none=f"{none_header}.{payload}.",
        unknown_kid=f"{b64(json.dumps(forged_header).encode())}.{payload}.{signature}",
        other_issuer=f"{header}.{b64(json.dumps(other).encode())}.{signature}",
    )


# (name, method, path, token attribute or None, expected HTTP status)
KINDS = [
    # anonymous
    ("anonymous read", "GET", "/api/jobs?page=2", None, 200),
    ("anonymous write", "POST", "/api/jobs", None, 403),
    ("backslash traversal", "GET", "/api\\..\\debug\\vars", None, 403),
    ("encoded slash traversal", "GET", "/api/..%2Fdebug/vars", None, 403),
    ("tomcat dot-semicolon", "GET", "/api/..;/debug/vars", None, 400),
    ("encoded NUL", "GET", "/api/jobs%00.json", None, 400),
    # with a token, good or bad
    ("alice write", "POST", "/api/jobs", "alice", 200),
    ("alice admin page", "GET", "/admin/users", "alice", 403),
    ("admin admin page", "GET", "/admin/users", "admin", 200),
    ("admin secret", "GET", "/admin/secret", "admin", 403),
    ("traversal to debug", "GET", "/api/%2e%2e/debug/vars", "admin", 403),
    ("tampered token", "GET", "/api/jobs", "tampered", 401),
    ("alg none", "POST", "/api/jobs", "alg_none", 401),
    ("unknown kid", "POST", "/api/jobs", "unknown_kid", 401),
    ("another issuer", "GET", "/api/jobs", "other_issuer", 401),
    ("garbage token", "GET", "/api/jobs", "garbage", 401),
]


def check_request(method: str, path: str, token: str | None) -> external_auth_pb2.CheckRequest:
    headers = {":method": method, ":path": path, ":authority": "jobs.example.com", "x-user": "smuggled"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    http_request = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method, path=path, host="jobs.example.com", scheme="https", headers=headers
    )
    attributes = attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http_request),
        context_extensions={"namespace": NAMESPACE, "app": "jobs"},
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = Counter()
        self.errors: list[str] = []
        self.wrong: list[str] = []

    def record(self, kind: str, error: str | None = None, wrong: str | None = None) -> None:
        with self.lock:
            self.requests[kind] += 1
            if error and len(self.errors) < 1000:
                self.errors.append(error)
            if wrong and len(self.wrong) < 1000:
                self.wrong.append(wrong)


def worker(grpc_address: str, http_address: str, tokens: list[Tokens], stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    channel = grpc.insecure_channel(grpc_address)
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    interval = WORKERS / RATE
    next_at = time.monotonic()
    while not stop.is_set():
        name, method, path, who, expected = rng.choice(KINDS)
        current = tokens[0]
        token = "a.b.c" if who == "garbage" else (getattr(current, who) if who else None)
        door = "grpc" if rng.random() < 0.7 else "http"
        kind = f"{door}: {name}"
        try:
            if door == "grpc":
                response = stub.Check(check_request(method, path, token), timeout=5)
                which = response.WhichOneof("http_response")
                status = 200 if which == "ok_response" else response.denied_response.status.code
                smuggled = which == "ok_response" and not (
                    "x-user" in response.ok_response.headers_to_remove
                    or any(option.header.key == "x-user" for option in response.ok_response.headers)
                )
            else:
                headers = {"X-Original-URI": path, "X-Original-Method": method, "X-User": "smuggled"}
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                query = urllib.parse.urlencode({"namespace": NAMESPACE, "app": "jobs"})
                status, _, response_headers = http_get(f"http://{http_address}/_auth?{query}", timeout=5, headers=headers)
                lowered = {key.lower(): value for key, value in response_headers.items()}
                removed = [name.strip() for name in lowered.get("x-envoy-auth-headers-to-remove", "").split(",")]
                smuggled = status == 200 and "x-user" not in lowered and "x-user" not in removed
            if status != expected:
                tally.record(kind, wrong=f"{kind}: expected {expected}, got {status}")
            elif smuggled:
                tally.record(kind, wrong=f"{kind}: a client's x-user would reach the service")
            else:
                tally.record(kind)
        except Exception as error:  # noqa: BLE001 - every failure is counted, whatever its type
            tally.record(kind, error=f"{kind}: {type(error).__name__}: {error}")
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    channel.close()


def main() -> int:
    os.environ.setdefault("PORTCULLIS_BIN", str(REPO / "target/release/portcullis"))
    work = Path(tempfile.mkdtemp(prefix="portcullis-soak-"))
    idp = start_idp(work / "idp.log")
    issuer = idp.issuer
    policy_dir = work / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "policies.yaml"
    policy_file.write_text(policies(issuer, 0))
    settings = (
        "jwks_refresh_interval_secs: 5\njwks_min_refetch_interval_secs: 2\njwks_refetch_wait_ms: 200\n"
        "jwks_fetch_timeout_ms: 1000\ntoken_cache_entries: 1000\nlog_level: warn\n"
        # Its HTTP requests are nginx auth_request's (X-Original-URI).
        "http_mode: nginx\n"
    )
    try:
        portcullis = start_portcullis(policy_dir, work / "portcullis.log", ready_timeout=30, settings=settings)
    except BaseException:
        idp.stop()
        raise
    server = portcullis.process
    failures: list[str] = []
    tally = Tally()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    reloads = Counter()
    flaps = 0
    try:
        tokens = [fetch_tokens(idp)]
        log(f"server pid {server.pid}, IdP {issuer}, {SECONDS:.0f} s, {WORKERS} workers at {RATE:.0f} req/s, logs in {work}")
        for index in range(WORKERS):
            thread = threading.Thread(
                target=worker, args=(portcullis.grpc_target, f"127.0.0.1:{portcullis.http_port}", tokens, stop, tally, index), daemon=True
            )
            thread.start()
            threads.append(thread)
        started = time.monotonic()
        time.sleep(WARMUP_SECONDS)
        rss_start = rss_kb(server.pid)
        log(f"RSS after {WARMUP_SECONDS:.0f} s of warm-up: {rss_start} kB")
        next_reload = time.monotonic() + RELOAD_SECONDS
        next_flap = time.monotonic() + FLAP_SECONDS / 2
        next_tokens = time.monotonic() + 60
        flap_until = 0.0
        variant = 0
        while time.monotonic() - started < SECONDS:
            if server.poll() is not None:
                failures.append(f"portcullis exited with {server.returncode}")
                break
            now = time.monotonic()
            if now >= next_reload:
                variant += 1
                if variant % 3 == 0:
                    policy_file.write_text(random.choice(BROKEN))
                    reloads["broken"] += 1
                    server.send_signal(signal.SIGHUP)
                    time.sleep(1.5)
                    policy_file.write_text(policies(issuer, variant))
                else:
                    policy_file.write_text(policies(issuer, variant))
                reloads["valid"] += 1
                server.send_signal(signal.SIGHUP)
                next_reload = now + RELOAD_SECONDS
            if now >= next_flap:
                idp.set_jwks_status(503)
                flaps += 1
                flap_until = now + FLAP_SECONDS / 3
                next_flap = now + FLAP_SECONDS
            if flap_until and now >= flap_until:
                idp.set_jwks_status(200)
                flap_until = 0.0
            if now >= next_tokens:
                tokens[0] = fetch_tokens(idp)
                next_tokens = now + 60
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        rss_end = rss_kb(server.pid) if server.poll() is None else 0
        metrics = http_get(portcullis.admin_url("/metrics"), timeout=5)[1].decode()
        generation = next((line.split()[-1] for line in metrics.splitlines() if line.startswith("portcullis_policy_generation ")), "?")
        total = sum(tally.requests.values())
        log(f"{total} requests in {SECONDS:.0f} s; {reloads['valid']} reloads (+{reloads['broken']} broken sets), policy generation {generation}; {flaps} IdP flaps")
        for kind, count in sorted(tally.requests.items()):
            log(f"  {count:7d}  {kind}")
        log(f"errors: {len(tally.errors)}")
        for error in tally.errors[:20]:
            log(f"  {error}")
        log(f"wrong decisions: {len(tally.wrong)}")
        for wrong in tally.wrong[:20]:
            log(f"  {wrong}")
        log(f"RSS: {rss_start} kB after warm-up, {rss_end} kB at the end ({rss_end - rss_start:+d} kB)")
        if tally.errors:
            failures.append(f"{len(tally.errors)} errors")
        if tally.wrong:
            failures.append(f"{len(tally.wrong)} wrong decisions")
        if total == 0:
            failures.append("no request was sent")
        if rss_end == 0 or rss_end - rss_start > RSS_GROWTH_LIMIT_KB:
            failures.append(f"RSS grew from {rss_start} kB to {rss_end} kB")
    finally:
        stop.set()
        stop_process(server)
        idp.stop()
    if server.returncode not in (0, None) and not failures:
        failures.append(f"portcullis stopped with {server.returncode}")
    if failures:
        log("FAILED: " + "; ".join(failures) + f" (logs in {work})")
        return 1
    log("passed: 0 errors, 0 wrong decisions, RSS flat")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
