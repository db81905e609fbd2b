"""The pieces of the proxy tests: nginx and Caddy running the shipped configs."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import PROCESS_LOGS, REPO_ROOT, RecordingUpstream, Seen, send, stop_process, wait_until  # noqa: F401 (RecordingUpstream, Seen re-exported)

SHIPPED_NGINX_CONFIG = REPO_ROOT / "deploy/nginx/nginx.conf"
SHIPPED_NGINX_SSO_CONFIG = REPO_ROOT / "deploy/nginx/nginx-sso.conf"
SHIPPED_ENVOY_HTTP_CONFIG = REPO_ROOT / "deploy/envoy/envoy-http.yaml"
SHIPPED_CADDYFILE = REPO_ROOT / "deploy/caddy/Caddyfile"
CADDY_INSTALL_HINT = "apt-get install -y --no-install-recommends caddy"
NGINX_READY_TIMEOUT_S = 10.0
NGINX_INSTALL_HINT = "apt-get install -y --no-install-recommends nginx-light"


def answers_http(port: int) -> bool:
    """True once something on port answers HTTP at all."""
    try:
        send(port, "GET", "/__ready")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- nginx


def nginx_binary() -> str:
    """$NGINX_BIN, else nginx on PATH or in /usr/sbin; a clear failure when it is missing."""
    binary = os.environ.get("NGINX_BIN") or shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if not binary:
        pytest.fail(f"nginx not found (set NGINX_BIN, or install Debian's package: {NGINX_INSTALL_HINT})")
    return binary


def _replace_once(text: str, old: str, new: str, shipped: str = "deploy/nginx/nginx.conf") -> str:
    count = text.count(old)
    assert count == 1, f"{shipped}: expected `{old}` once, found it {count} times"
    return text.replace(old, new)


def render_nginx_config(shipped: str, *, listen: int, portcullis: int, upstream: int, workdir: Path) -> str:
    """The shipped config with its addresses moved to loopback ports, and nginx's scratch paths in workdir."""
    config = _replace_once(shipped, "listen 8080;", f"listen 127.0.0.1:{listen};")
    config = _replace_once(config, "http://portcullis:8000/", f"http://127.0.0.1:{portcullis}/")
    config = _replace_once(config, "http://upstream:8000;", f"http://127.0.0.1:{upstream};")
    # Debian's build keeps request bodies and buffers under /var/lib/nginx, which only root
    # may write: give this instance its own, so the test runs as any user.
    scratch = "".join(f"    {kind}_temp_path {workdir / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return _replace_once(config, "http {\n", "http {\n" + scratch)


def render_nginx_sso_config(
    shipped: str, *, listen: int, portcullis: int, upstream: int, workdir: Path, tls: tuple[Path, Path] | None = None
) -> str:
    """deploy/nginx/nginx-sso.conf moved to loopback ports as render_nginx_config does, its login
    endpoints' address too; with `tls` (certificate chain, key) the server speaks HTTPS."""
    login = "proxy_pass http://portcullis:8000;"
    config = _replace_once(shipped, login, f"proxy_pass http://127.0.0.1:{portcullis};", "deploy/nginx/nginx-sso.conf")
    config = render_nginx_config(config, listen=listen, portcullis=portcullis, upstream=upstream, workdir=workdir)
    if tls:
        chain, key = tls
        config = _replace_once(
            config,
            f"listen 127.0.0.1:{listen};",
            f"listen 127.0.0.1:{listen} ssl;\n        ssl_certificate {chain};\n        ssl_certificate_key {key};",
        )
    return config


@dataclass
class NginxProxy:
    process: subprocess.Popen
    port: int
    log: Path
    error_log: Path
    # `nginx` for deploy/nginx/nginx.conf, `ingress-nginx` for the controller's rendering.
    name: str = "nginx"


def start_nginx(config: str, port: int, workdir: Path, name: str, flavor: str = "nginx") -> NginxProxy:
    """nginx in the foreground (`daemon off`) with the given config; waits until it answers."""
    config_path, log, error_log = workdir / f"{name}.conf", workdir / f"{name}.log", workdir / f"{name}-error.log"
    config_path.write_text(config)
    command = [
        nginx_binary(),
        "-p",
        str(workdir),
        "-c",
        str(config_path),
        "-g",
        f"daemon off; pid {workdir / (name + '.pid')}; error_log {error_log} info;",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    PROCESS_LOGS[name] = log
    PROCESS_LOGS[f"{name}-error"] = error_log
    try:
        wait_until(lambda: answers_http(port), NGINX_READY_TIMEOUT_S, name, process, log)
    except BaseException:
        stop_process(process)
        raise
    return NginxProxy(process, port, log, error_log, flavor)


# ---------------------------------------------------------------- Caddy


@dataclass
class CaddyProxy:
    process: subprocess.Popen
    port: int
    log: Path
    name: str = "caddy"


def caddy_binary() -> str:
    """$CADDY_BIN, else caddy on PATH; a clear failure when it is missing."""
    binary = os.environ.get("CADDY_BIN") or shutil.which("caddy")
    if not binary:
        pytest.fail(f"caddy not found (set CADDY_BIN, or install Debian's package: {CADDY_INSTALL_HINT})")
    return binary


def render_caddyfile(shipped: str, *, listen: int, portcullis: int, upstream: int) -> str:
    """The shipped Caddyfile with its three addresses moved to loopback ports."""
    config = _replace_once(shipped, "http://:8080 {", f"http://:{listen} {{\n\tbind 127.0.0.1", "deploy/caddy/Caddyfile")
    config = _replace_once(config, "forward_auth portcullis:8000 {", f"forward_auth 127.0.0.1:{portcullis} {{", "deploy/caddy/Caddyfile")
    return _replace_once(config, "reverse_proxy upstream:8000", f"reverse_proxy 127.0.0.1:{upstream}", "deploy/caddy/Caddyfile")


def start_caddy(config: str, port: int, workdir: Path, name: str) -> CaddyProxy:
    """`caddy run` with the given Caddyfile, its state kept in workdir; waits until it answers."""
    config_path, log = workdir / "Caddyfile", workdir / f"{name}.log"
    config_path.write_text(config)
    command = [caddy_binary(), "run", "--adapter", "caddyfile", "--config", str(config_path)]
    environment = {**os.environ, "HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir / "config"), "XDG_DATA_HOME": str(workdir / "data")}
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
    PROCESS_LOGS[name] = log
    try:
        wait_until(lambda: answers_http(port), NGINX_READY_TIMEOUT_S, name, process, log)
    except BaseException:
        stop_process(process)
        raise
    return CaddyProxy(process, port, log)

