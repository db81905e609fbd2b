"""The test IdP: tests/oidc/idp.mjs (Node's oidc-provider in Keycloak's URL layout) as a child process."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import PROCESS_LOGS, REPO_ROOT, log_tail, stop_process

OIDC_DIR = REPO_ROOT / "tests" / "oidc"
IDP_SCRIPT = OIDC_DIR / "idp.mjs"
IDP_READY_TIMEOUT_S = 10.0  # it prints `ready` in about 1 s; a busy 2-core machine may need more
REALM = "jobs"
HTTP_TIMEOUT_S = 5.0


def node_binary() -> str:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node not found on PATH (set NODE_BIN): the JWT suite's IdP runs on Node.js")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"oidc-provider is not installed: run `npm ci --prefix {OIDC_DIR.relative_to(REPO_ROOT)}`")
    return node


def _request(method: str, url: str, form: dict | None = None) -> tuple[int, dict]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@dataclass
class Idp:
    """A running IdP: one Keycloak-shaped realm on 127.0.0.1."""

    process: subprocess.Popen
    issuer: str
    port: int
    log: Path
    ready: dict = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def token_response(self, username: str, password: str | None = None, client_id: str = "jobs-web", **extra) -> tuple[int, dict]:
        """Keycloak's direct grant: grant_type=password with a public client."""
        form = {"grant_type": "password", "client_id": client_id, "username": username, "password": password or username, **extra}
        return _request("POST", self.token_endpoint, form)

    def token(self, username: str = "alice", client_id: str = "jobs-web", **extra) -> str:
        """A fresh access token (a JWT) for username, whose password is its name."""
        status, body = self.token_response(username, client_id=client_id, **extra)
        assert status == 200, f"IdP token endpoint answered {status}: {body}"
        return body["access_token"]

    def rotate(self, drop_old: bool = False) -> dict:
        """A new RS256 signing key; returns {"kid": new kid, "kids": published kids, "es256_kid": ...}."""
        status, body = _request("POST", f"{self.base}/admin/rotate" + ("?drop_old=1" if drop_old else ""), {})
        assert status == 200, body
        return body

    def keys(self) -> dict:
        status, body = _request("GET", f"{self.base}/admin/keys")
        assert status == 200, body
        return body

    def stats(self) -> dict:
        """How often discovery, the JWKS and the token endpoint were requested."""
        status, body = _request("GET", f"{self.base}/admin/stats")
        assert status == 200, body
        return body

    def set_jwks_status(self, code: int) -> None:
        """Make the JWKS endpoint answer `code` (200: normal again)."""
        status, body = _request("POST", f"{self.base}/admin/jwks-status?code={code}", {})
        assert status == 200, body

    def published_jwks(self) -> dict:
        status, body = _request("GET", self.jwks_uri)
        assert status == 200, body
        return body

    def kill(self) -> None:
        """SIGKILL: the IdP vanishes without closing anything."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int:
        return stop_process(self.process)


def start_idp(
    log: Path,
    port: int = 0,
    realm: str = REALM,
    sso_redirect_uri: str | None = None,
    sso_refresh_ttl: int | None = None,
    id_token_roles: bool = False,
) -> Idp:
    """Start tests/oidc/idp.mjs and wait for its `ready` line (JSON with the issuer).

    sso_redirect_uri: serve browser logins (the `portcullis-sso` client) back to this URL.
    id_token_roles: the browser logins' ID tokens carry Keycloak's realm_access and resource_access.
    sso_refresh_ttl: give that client rotating refresh tokens and access tokens of this many seconds.
    """
    command = [node_binary(), str(IDP_SCRIPT), "--port", str(port), "--realm", realm]
    if sso_redirect_uri:
        command += ["--sso-redirect-uri", sso_redirect_uri]
    if id_token_roles:
        command += ["--sso-id-token-roles"]
    if sso_refresh_ttl is not None:
        command += ["--sso-refresh-ttl", str(sso_refresh_ttl)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, cwd=REPO_ROOT)
    PROCESS_LOGS[log.stem] = log
    deadline = time.monotonic() + IDP_READY_TIMEOUT_S
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                stop_process(process)
                pytest.fail(f"IdP not ready after {IDP_READY_TIMEOUT_S}s (exit {process.returncode})\n{log_tail(log)}")
            if selector.select(timeout=min(remaining, 0.2)):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
    ready = json.loads(line.split(b"\n", 1)[0])
    assert ready.get("ready") is True, ready
    return Idp(process, ready["issuer"], ready["port"], log, ready)
