"""Signing in with GitHub and with Google in a real browser: the shared Chromium of tests/sso, real
Caddy terminating TLS in front of portcullis's HTTP door (tls_site.py), and the GitHub and Google
stand-ins (github_server.py, google_server.py) on http://127.0.0.1. The person picks the provider
on portcullis's chooser page, the stand-in approves them, and the app behind Caddy is told who
they are; the secure session cookie is kept by Chromium across the whole domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from github_server import GithubServer, GithubUser
from google_server import GoogleServer, GoogleUser
from harness import free_port, serving, stop_process
from tls_site import DOMAIN, IdentityApp, start_tls_caddy

SESSION_COOKIE = "__Secure-_portcullis_session"
OCTOCAT = GithubUser(id=583231, login="octocat", name="The Octocat",
                     emails=[{"email": "octocat@acme.example", "primary": True, "verified": True}],
                     orgs=["acme"], teams=[("acme", "platform")])
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: people, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{google}/*"]}}}}]
  - when: [{{key: "request.auth.claims[teams]", values: ["acme/platform"]}}]
"""


@dataclass
class Site:
    port: int
    apps: dict[str, IdentityApp]
    github: GithubServer
    google: GoogleServer

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}.{DOMAIN}:{self.port}{path}"


@pytest.fixture(scope="module")
def site(launch_portcullis, tmp_path_factory, test_certificate) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("chromium-providers")
    port = free_port()
    callback = f"https://auth.{DOMAIN}:{port}/oauth2/callback"
    with ExitStack() as stack:
        github = stack.enter_context(serving(GithubServer({"gh-client": ("gh-secret", callback)}, [OCTOCAT])))
        google = stack.enter_context(serving(GoogleServer({"google-client": ("google-secret", callback)})))
        (work / "policies").mkdir()
        (work / "policies" / "people.yaml").write_text(POLICY.format(google=google.issuer))
        (work / "github-secret").write_text("gh-secret\n")
        (work / "google-secret").write_text("google-secret\n")
        settings = f"""http_mode: traefik
sso:
  redirect_url: {callback}
  cookie_domain: {DOMAIN}
  sites: [.{DOMAIN}]
  providers:
  - name: github
    kind: github
    display_name: GitHub
    client_id: gh-client
    client_secret_file: {work / "github-secret"}
    github: {{base_url: "{github.base_url}", api_url: "{github.api_url}"}}
    allowed_orgs: [acme]
  - name: google
    kind: google
    display_name: Google
    issuer: {google.issuer}
    client_id: google-client
    client_secret_file: {work / "google-secret"}
    hosted_domains: [corp.example]
"""
        server = launch_portcullis(work / "policies", settings=settings)
        apps = {name: IdentityApp(name) for name in ("app1", "app2")}
        for app in apps.values():
            stack.enter_context(serving(app))
        caddy = start_tls_caddy(work, test_certificate, port, server.http_port, {n: a.port for n, a in apps.items()})
        try:
            yield Site(port, apps, github, google)
        finally:
            assert stop_process(caddy.process) == 0


def sign_in_with(site: Site, context, provider_label: str, path: str = "/"):
    """Open app1 with no session, pick the provider on the chooser page, land back on app1."""
    page = context.new_page()
    page.goto(site.url("app1", path))
    assert page.url.startswith(site.url("auth", "/oauth2/start?rd=")), page.url
    assert page.locator("script").count() == 0
    page.click(f"text=Sign in with {provider_label}")
    page.wait_for_url(site.url("app1", path))
    return page


def test_a_person_signs_in_with_github_in_chromium_and_both_apps_know_them_by_their_github_id(site, context):
    page = sign_in_with(site, context, "GitHub", "/builds")
    assert page.inner_text("#x-auth-request-user") == "583231"
    assert page.inner_text("#x-auth-request-email") == "octocat@acme.example"
    assert page.inner_text("#x-auth-request-preferred-username") == "octocat"
    session = {cookie["name"]: cookie for cookie in context.cookies(site.url("app2"))}[SESSION_COOKIE]
    assert session["domain"] == f".{DOMAIN}" and session["secure"] and session["httpOnly"]
    second = context.new_page()
    assert second.goto(site.url("app2")).status == 200, "the policy's claims[teams] lets the second app in"
    assert second.inner_text("#x-auth-request-user") == "583231"


def test_a_person_signs_in_with_google_in_chromium_from_the_allowed_hosted_domain(site, context):
    site.google.user = GoogleUser(sub="1080002", email="bob@corp.example", hd="corp.example")
    page = sign_in_with(site, context, "Google")
    assert page.inner_text("#x-auth-request-user") == "1080002"
    assert page.inner_text("#x-auth-request-email") == "bob@corp.example"
    assert site.apps["app1"].last("/").values("x-auth-request-email") == ["bob@corp.example"]


def test_a_google_account_of_another_domain_sees_the_refusal_page_in_chromium_and_gets_no_session(site, context):
    site.google.user = GoogleUser(sub="1080003", email="eve@gmail.example")
    page = context.new_page()
    page.goto(site.url("app1"))
    page.click("text=Sign in with Google")
    page.wait_for_load_state()
    assert page.url.startswith(site.url("auth", "/oauth2/callback?")), page.url
    assert "Sign-in refused" in page.inner_text("h1")
    assert SESSION_COOKIE not in {cookie["name"] for cookie in context.cookies()}
