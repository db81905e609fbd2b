"""Browser single sign-on in Chromium through each door that is not Caddy (tests/sso/test_chromium_login.py
covers Caddy): real nginx running the shipped deploy/nginx/nginx-sso.conf, and real Envoy running the
shipped deploy/envoy/envoy-grpc.yaml (portcullis's gRPC door) plus the login route of docs/sso.md.
Each terminates TLS with the session's `*.sso.test` test certificate, so the `__Secure-` session
cookie is kept; each logs in at the real OIDC provider of tests/oidc with its login form.

Hosts: app1.sso.test and app2.sso.test are protected (one app serves both and shows the identity
headers it got), auth.sso.test serves the login endpoints, all on the door's port.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from harness import REPO_ROOT, serving, stop_process
from tls_site import DOMAIN, Certificate, IdentityApp, is_login_form, log_in_on_form, login_site, requested_urls

sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
from envoy_harness import SHIPPED_ENVOY_CONFIG, running_envoy, with_login_route, with_tls  # noqa: E402
from proxy_harness import SHIPPED_NGINX_SSO_CONFIG, render_nginx_sso_config, start_nginx  # noqa: E402

SESSION_COOKIE = "__Secure-_portcullis_session"
ALICE = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"
DOORS = ["nginx", "envoy"]
# The door's HTTP dialect: nginx needs its own (no redirect in auth_request); behind Envoy's gRPC
# door the HTTP door serves the login endpoints only, in any dialect.
HTTP_MODES = {"nginx": "nginx", "envoy": "traefik"}


@dataclass
class Door:
    """One proxy in front of the apps and the login endpoints on https://*.sso.test:port, and the IdP."""

    name: str
    port: int
    idp_base: str
    app: IdentityApp

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}.{DOMAIN}:{self.port}{path}"


def run_nginx(workdir: Path, certificate: Certificate, port: int, portcullis, app: IdentityApp) -> Iterator[None]:
    shipped = SHIPPED_NGINX_SSO_CONFIG.read_text()
    tls = (certificate.chain, certificate.key)
    config = render_nginx_sso_config(shipped, listen=port, portcullis=portcullis.http_port, upstream=app.port, workdir=workdir, tls=tls)
    proxy = start_nginx(config, port, workdir, "nginx-chromium")
    yield
    assert stop_process(proxy.process) == 0


def run_envoy(workdir: Path, certificate: Certificate, port: int, portcullis, app: IdentityApp) -> Iterator[None]:
    def extend(config: dict) -> dict:
        config = with_login_route(config, login_host=f"auth.{DOMAIN}:{port}", portcullis_http=portcullis.http_port)
        return with_tls(config, chain=certificate.chain, key=certificate.key)

    shipped = yaml.safe_load(SHIPPED_ENVOY_CONFIG.read_text())
    yield from running_envoy(
        shipped, portcullis=portcullis.grpc_port, upstream=app.port, workdir=workdir, name="envoy-chromium", listener=port, extend=extend
    )


RUN_DOOR = {"nginx": run_nginx, "envoy": run_envoy}


@pytest.fixture(scope="module", params=DOORS)
def door(request, launch_portcullis, tmp_path_factory, test_certificate) -> Iterator[Door]:
    name = request.param
    work = tmp_path_factory.mktemp(f"chromium-{name}")
    login = login_site(work, HTTP_MODES[name])
    port, idp = login.port, login.idp
    portcullis = launch_portcullis(login.policies, settings=login.settings)
    try:
        with serving(IdentityApp("app")) as app:
            for _ in RUN_DOOR[name](work, test_certificate, port, portcullis, app):
                yield Door(name, port, idp.base, app)
    finally:
        assert idp.stop() == 0


def test_a_person_logs_in_once_through_the_door_the_second_app_knows_them_and_one_sign_out_ends_both(door, context):
    page = context.new_page()
    page.goto(door.url("app1", "/dashboard?tab=2"))
    assert is_login_form(page) and page.url.startswith(door.idp_base), page.url
    log_in_on_form(page)
    page.wait_for_url(door.url("app1", "/dashboard?tab=2"))
    assert page.inner_text("#x-auth-request-user") == ALICE
    assert page.inner_text("#x-auth-request-email") == "alice@example.com"
    reached = door.app.last("/dashboard?tab=2")
    assert reached.values("host") == [f"app1.{DOMAIN}:{door.port}"]
    assert reached.values("x-auth-request-preferred-username") == ["alice"]
    assert "cookie" not in reached.names(), "the session cookie, the only cookie, is taken out of what the app receives"
    session = next(cookie for cookie in context.cookies() if cookie["name"] == SESSION_COOKIE)
    assert (session["domain"], session["secure"], session["httpOnly"]) == (f".{DOMAIN}", True, True)

    urls = requested_urls(context)
    second = context.new_page()
    answer = second.goto(door.url("app2"))
    assert answer.status == 200 and second.url == door.url("app2")
    assert second.inner_text("#x-auth-request-preferred-username") == "alice"
    assert [url for url in urls if not url.startswith(door.url("app2"))] == [], "no login: neither the login endpoints nor the IdP were asked"
    assert door.app.last("/").values("host") == [f"app2.{DOMAIN}:{door.port}"]

    answer = page.goto(door.url("auth", "/oauth2/sign_out"))
    assert answer.status == 200
    assert SESSION_COOKIE not in {cookie["name"] for cookie in context.cookies()}
    # The IdP remembers its own login until it is signed out there too: its end-session page.
    page.goto(f"{door.idp_base}/realms/jobs/protocol/openid-connect/logout")
    page.click("button[value=yes]")
    page.wait_for_load_state()
    for app in ("app1", "app2"):
        reached_before = len(door.app.seen)
        page.goto(door.url(app))
        assert is_login_form(page), (app, page.url)
        assert len(door.app.seen) == reached_before, f"{app} was not reached"
