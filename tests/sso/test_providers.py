"""Several sign-in providers at once over real sockets: a Keycloak-shaped OIDC provider (the real
`oidc-provider` of tests/oidc, its ID tokens carrying Keycloak's roles), the GitHub and Google
stand-ins of tests/sso (github_server.py, google_server.py), and portcullis's HTTP door in
Traefik's forward-auth mode with the cookie-keeping client of sso_shared.py.
"""

from __future__ import annotations

import html.parser
import re
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from github_server import GithubServer, GithubUser
from google_server import GoogleServer, GoogleUser
from harness import serving
from sso_shared import AUTH_HOST, CALLBACK, SESSION_COOKIE, Browser, Idp, start_idp
from test_logout import logout_claims, post_logout_token, signed
from test_redis_sessions import Keys, RedisServer, keys, redis, redis_block  # noqa: F401 (fixtures)

GITHUB_CLIENT = ("gh-client", "gh-secret")
GOOGLE_CLIENT = ("google-client.apps.googleusercontent.com", "google-secret")
APP = "http://app1.sso.test"
ALICE_GH = GithubUser(
    id=583231, login="Alice-GH", name="Alice Example",
    emails=[{"email": "old@example.com", "primary": False, "verified": True, "visibility": None},
            {"email": "alice@acme.example", "primary": True, "verified": True, "visibility": "private"}],
    orgs=["ACME", "hobby-club"], teams=[("ACME", "platform"), ("hobby-club", "chess")],
)
MALLORY_GH = GithubUser(id=9, login="mallory", emails=[{"email": "m@evil.example", "primary": True, "verified": False}],
                        orgs=["evil-corp"], teams=[("evil-corp", "platform")])
KEYCLOAK_ALICE_SUB = "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"

POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: people, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{keycloak}/*", "{google}/*", "https://github.example/*"]}}}}]
    to: [{{operation: {{paths: ["/", "/home*"]}}}}]
  - to: [{{operation: {{paths: ["/platform*"]}}}}]
    when: [{{key: "request.auth.claims[teams]", values: ["acme/platform"]}}]
  - to: [{{operation: {{paths: ["/realm-admin*"]}}}}]
    when: [{{key: "request.auth.claims[realm_access][roles]", values: [admin]}}]
  - to: [{{operation: {{paths: ["/editors*"]}}}}]
    when: [{{key: "request.auth.claims[resource_access][jobs-web][roles]", values: [editor]}}]
"""


class Links(html.parser.HTMLParser):
    """The links of a page, as a browser reads them (entities decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
        if tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def links_of(page: bytes) -> Links:
    parser = Links()
    parser.feed(page.decode())
    return parser


@dataclass
class World:
    door: int
    github: GithubServer
    google: GoogleServer
    keycloak: Idp

    @property
    def idp(self) -> Idp:
        """The Keycloak-shaped provider, under the name tests/sso/test_logout.py's helpers read."""
        return self.keycloak

    def browser(self) -> Browser:
        return Browser(self.door)

    def follow(self, browser: Browser, url: str, hops: int = 12):
        """GET `url` and every redirect after it; the last answer and its URL."""
        for _ in range(hops):
            parts = urllib.parse.urlsplit(url)
            if parts.hostname not in (AUTH_HOST, "127.0.0.1"):
                return url, None
            status, msg, body = browser.get(url, parts.port or self.keycloak.port)
            if status not in (302, 303):
                return url, (status, msg, body)
            url = urllib.parse.urljoin(url, msg["Location"])
        raise AssertionError("too many redirects")

    def start_url(self, browser: Browser, url: str) -> str:
        status, msg, _ = browser.check(url)
        assert status == 302, status
        return msg["Location"]

    def log_in_with(self, browser: Browser, url: str, provider: str):
        """Open `url`, pick `provider` on the chooser page, log in there; the last answer and its URL."""
        start = self.start_url(browser, url)
        status, msg, page = browser.get(start, self.door)
        assert status == 200, (status, page)
        choice = next(href for label, href in links_of(page).links if f"provider={provider}&" in href)
        return self.follow(browser, urllib.parse.urljoin(start, choice))


def settings(world_secrets, github: GithubServer, google: GoogleServer, keycloak_issuer: str, extra: str = "") -> str:
    return f"""http_mode: traefik
sso:
  redirect_url: {CALLBACK}
  cookie_domain: sso.test
  cookie_secure: false
  allow_http_redirects: true
  sites: [.sso.test]
  sign_out_at_provider: true
  providers:
  - name: keycloak
    display_name: Staff (Keycloak)
    issuer: {keycloak_issuer}
    client_id: portcullis-sso
    client_secret_file: {world_secrets['keycloak']}
  - name: github
    kind: github
    display_name: GitHub <ACME>
    client_id: {GITHUB_CLIENT[0]}
    client_secret_file: {world_secrets['github']}
    github: {{base_url: "{github.base_url}", api_url: "{github.api_url}"}}
    allowed_orgs: [acme]
  - name: google
    kind: google
    issuer: {google.issuer}
    client_id: {GOOGLE_CLIENT[0]}
    client_secret_env: GOOGLE_SECRET_FOR_TESTS
    hosted_domains: [corp.example]
{extra}"""


@pytest.fixture(scope="module")
def world(launch_portcullis, tmp_path_factory, monkeypatch_module):
    work = tmp_path_factory.mktemp("providers")
    with ExitStack() as stack:
        idp = start_idp(work / "keycloak.log", sso_redirect_uri=CALLBACK, id_token_roles=True)
        stack.callback(idp.stop)
        github = stack.enter_context(serving(GithubServer({GITHUB_CLIENT[0]: (GITHUB_CLIENT[1], CALLBACK)},
                                                          [ALICE_GH, MALLORY_GH])))
        google = stack.enter_context(serving(GoogleServer({GOOGLE_CLIENT[0]: (GOOGLE_CLIENT[1], CALLBACK)})))
        secrets = {"keycloak": work / "keycloak-secret", "github": work / "github-secret"}
        secrets["keycloak"].write_text("sso-secret\n")
        secrets["github"].write_text(GITHUB_CLIENT[1] + "\n")
        policies = work / "policies"
        policies.mkdir()
        # The GitHub provider's issuer is its base_url: here the stand-in's, named in the policy.
        policy = POLICY.format(keycloak=idp.issuer, google=google.issuer).replace("https://github.example",
                                                                                  github.base_url)
        (policies / "people.yaml").write_text(policy)
        monkeypatch_module.setenv("GOOGLE_SECRET_FOR_TESTS", GOOGLE_CLIENT[1])
        server = launch_portcullis(policies, settings=settings(secrets, github, google, idp.issuer))
        yield World(server.http_port, github, google, idp)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_with_several_providers_start_answers_a_chooser_page_linking_each_one(world):
    browser = world.browser()
    start = world.start_url(browser, f"{APP}/home?tab=1")
    status, msg, page = browser.get(start, world.door)
    assert status == 200
    assert msg["Content-Type"].startswith("text/html")
    assert msg["Cache-Control"] == "no-store"
    links = links_of(page)
    assert links.scripts == 0 and b"<script" not in page.lower()
    rd = urllib.parse.quote(f"{APP}/home?tab=1", safe="")
    assert links.links == [
        ("Sign in with Staff (Keycloak)", f"/oauth2/start?provider=keycloak&rd={rd}"),
        ("Sign in with GitHub <ACME>", f"/oauth2/start?provider=github&rd={rd}"),
        ("Sign in with google", f"/oauth2/start?provider=google&rd={rd}"),
    ]
    assert b"GitHub &lt;ACME&gt;" in page, "the display name is escaped"
    assert browser.value_of(SESSION_COOKIE) is None


def test_a_provider_is_chosen_by_name_and_an_unknown_one_is_refused(world):
    browser = world.browser()
    rd = urllib.parse.quote(f"{APP}/", safe="")
    status, msg, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?provider=github&rd={rd}", world.door)
    assert status == 302
    assert msg["Location"].startswith(f"{world.github.base_url}/login/oauth/authorize?client_id=gh-client&")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(msg["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and "nonce" not in query
    assert query["redirect_uri"] == [CALLBACK]
    status, msg, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?provider=google&rd={rd}", world.door)
    assert status == 302 and msg["Location"].startswith(f"{world.google.issuer}/o/oauth2/v2/auth?")
    status, _, body = browser.get(f"http://{AUTH_HOST}/oauth2/start?provider=gitlab&rd={rd}", world.door)
    assert status == 400, body


def test_a_github_login_gives_identity_headers_and_claims_a_policy_reads(world):
    world.github.user = ALICE_GH.login
    browser = world.browser()
    url, answer = world.log_in_with(browser, f"{APP}/platform/deploys", "github")
    assert answer is None and url == f"{APP}/platform/deploys", (url, answer)
    status, headers, _ = browser.check(f"{APP}/platform/deploys")
    assert status == 200, "request.auth.claims[teams] holds acme/platform"
    assert headers["X-Auth-Request-User"] == "583231", "the numeric id: a login can be renamed"
    assert headers["X-Auth-Request-Email"] == "alice@acme.example", "the primary verified email"
    assert headers["X-Auth-Request-Preferred-Username"] == "Alice-GH"
    assert browser.check(f"{APP}/realm-admin")[0] == 403, "no Keycloak role from GitHub"
    status, _, body = browser.get(f"http://{AUTH_HOST}/oauth2/userinfo", world.door)
    assert status == 200 and b'"provider":"github"' in body and world.github.base_url.encode() in body, body
    # What GitHub's API was asked, as its documentation wants it.
    path, sent = world.github.api_requests[-1]
    sent = {name.lower(): value for name, value in sent.items()}
    assert sent["accept"] == "application/vnd.github+json"
    assert sent["x-github-api-version"] == "2022-11-28"
    assert sent["authorization"].startswith("Bearer gho_") and sent["user-agent"].startswith("portcullis/")


def test_github_logins_outside_the_allowed_organizations_get_a_403_page_and_no_session(world):
    world.github.user = MALLORY_GH.login
    try:
        browser = world.browser()
        _, answer = world.log_in_with(browser, f"{APP}/home", "github")
        status, msg, page = answer
        assert status == 403
        assert msg["Content-Type"].startswith("text/html")
        assert b"not a member of an organization allowed" in page
        assert browser.value_of(SESSION_COOKIE) is None
        assert browser.check(f"{APP}/home")[0] == 302, "still anonymous: sent to log in"
    finally:
        world.github.user = ALICE_GH.login


def test_a_callback_is_completed_only_with_the_provider_its_login_started_with(world):
    browser = world.browser()
    rd = urllib.parse.quote(f"{APP}/home", safe="")
    # A login started with GitHub ...
    _, msg, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?provider=github&rd={rd}", world.door)
    github_state = urllib.parse.parse_qs(urllib.parse.urlsplit(msg["Location"]).query)["state"][0]
    # ... and a code Google issued for another login of the same browser.
    _, msg, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?provider=google&rd={rd}", world.door)
    status, msg, _ = browser.get(msg["Location"], world.google.server_address[1])
    assert status == 302
    google_code = urllib.parse.parse_qs(urllib.parse.urlsplit(msg["Location"]).query)["code"][0]
    crossed = f"{CALLBACK}?" + urllib.parse.urlencode({"code": google_code, "state": github_state,
                                                        "provider": "google"})
    status, _, body = browser.get(crossed, world.door)
    assert status == 502, (status, body)
    assert browser.value_of(SESSION_COOKIE) is None, "no session from a crossed callback"
    assert google_code not in world.google.exchanges, "the code never went to Google: GitHub's login asked GitHub"


def test_a_google_login_from_the_allowed_hosted_domain_opens_a_session(world):
    world.google.user = GoogleUser(sub="1080001", email="alice@corp.example", hd="corp.example")
    browser = world.browser()
    url, answer = world.log_in_with(browser, f"{APP}/home", "google")
    assert answer is None and url == f"{APP}/home", answer
    status, headers, _ = browser.check(f"{APP}/home")
    assert status == 200
    assert headers["X-Auth-Request-User"] == "1080001"
    assert headers["X-Auth-Request-Email"] == "alice@corp.example"


@pytest.mark.parametrize("user, why", [
    (GoogleUser(sub="2", email="bob@gmail.example"), b"does not belong to an organization"),
    (GoogleUser(sub="3", email="eve@other.example", hd="other.example"), b"does not belong to an organization"),
    (GoogleUser(sub="4", email="carol@corp.example", hd="corp.example", email_verified=False), b"not verified"),
])
def test_google_logins_outside_the_hosted_domains_or_unverified_get_a_403_page_and_no_session(world, user, why):
    world.google.user = user
    browser = world.browser()
    _, answer = world.log_in_with(browser, f"{APP}/home", "google")
    status, msg, page = answer
    assert status == 403 and msg["Cache-Control"] == "no-store"
    assert why in page
    assert browser.value_of(SESSION_COOKIE) is None


def test_keycloak_realm_and_client_roles_of_the_id_token_are_claims_policies_read(world):
    for user, realm_admin, editor in [("alice", 403, 403), ("admin", 200, 200)]:
        browser = world.browser()
        log_in_at_keycloak(world, browser, f"{APP}/home", user)
        assert browser.check(f"{APP}/home")[0] == 200, user
        assert browser.check(f"{APP}/realm-admin")[0] == realm_admin, f"{user}: realm_access.roles"
        assert browser.check(f"{APP}/editors")[0] == editor, f"{user}: resource_access.jobs-web.roles"


def log_in_at_keycloak(world: World, browser: Browser, url: str, user: str) -> None:
    """Open `url`, pick Keycloak, fill in its login form as `user`; back at `url`."""
    start = world.start_url(browser, url)
    _, _, page = browser.get(start, world.door)
    choice = next(href for _, href in links_of(page).links if "provider=keycloak&" in href)
    page_url, answer = world.follow(browser, urllib.parse.urljoin(start, choice))
    for _ in range(4):
        if answer is None:
            assert page_url == url
            return
        status, _, page = answer
        assert status == 200, page[:300]
        action = re.search(rb'action="([^"]+)"', page)
        form = urllib.parse.urlencode({"prompt": "login", "login": user, "password": user})
        status, msg, body = browser.get(urllib.parse.urljoin(page_url, action.group(1).decode()), world.keycloak.port,
                                        method="POST", body=form)
        assert status in (302, 303), body[:300]
        page_url, answer = world.follow(browser, urllib.parse.urljoin(page_url, msg["Location"]))
    raise AssertionError("no login")


def test_a_session_opened_with_a_provider_limited_to_some_sites_counts_there_only(launch_portcullis, world, tmp_path):
    secret = tmp_path / "github-secret"
    secret.write_text(GITHUB_CLIENT[1])
    block = f"""http_mode: traefik
sso:
  redirect_url: {CALLBACK}
  cookie_domain: sso.test
  cookie_secure: false
  allow_http_redirects: true
  sites: [.sso.test]
  providers:
  - name: github
    kind: github
    client_id: {GITHUB_CLIENT[0]}
    client_secret_file: {secret}
    github: {{base_url: "{world.github.base_url}", api_url: "{world.github.api_url}"}}
    sites: [app1.sso.test]
"""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY.format(keycloak="https://unused", google="https://unused")
                                     .replace("https://github.example", world.github.base_url))
    server = launch_portcullis(policies, settings=block)
    world.github.user = ALICE_GH.login
    browser = Browser(server.http_port)
    status, msg, _ = browser.check(f"{APP}/home")
    start = msg["Location"]
    status, msg, _ = browser.get(start, server.http_port)
    assert status == 302, "one provider applies: straight to it, no chooser"
    status, msg, _ = browser.get(msg["Location"], world.github.server_address[1])
    status, msg, _ = browser.get(msg["Location"], server.http_port)
    assert status == 302 and msg["Location"] == f"{APP}/home"
    assert browser.check(f"{APP}/home")[0] == 200
    status, msg, _ = browser.check("http://app2.sso.test/home")
    assert status == 302, "app2 is not among the provider's sites: the session does not count there"
    status, _, body = browser.get(msg["Location"], server.http_port)
    assert status == 400 and b"no sign-in provider" in body


def test_sign_out_goes_on_to_the_provider_of_the_session_and_github_has_none(world):
    world.github.user = ALICE_GH.login
    github_browser, keycloak_browser = world.browser(), world.browser()
    world.log_in_with(github_browser, f"{APP}/home", "github")
    log_in_at_keycloak(world, keycloak_browser, f"{APP}/home", "alice")
    status, _, body = github_browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", world.door)
    assert (status, body) == (200, b"signed out"), "a GitHub session has no sign-out at the provider"
    status, msg, _ = keycloak_browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", world.door)
    assert status == 302
    assert msg["Location"].startswith(f"{world.keycloak.issuer}/protocol/openid-connect/logout?id_token_hint=")
    assert "client_id=portcullis-sso" in msg["Location"]


def test_a_back_channel_logout_ends_the_sessions_of_its_provider_only(world):
    world.github.user = ALICE_GH.login
    github_browser, keycloak_browser = world.browser(), world.browser()
    world.log_in_with(github_browser, f"{APP}/home", "github")
    log_in_at_keycloak(world, keycloak_browser, f"{APP}/home", "alice")
    token = signed(world, logout_claims(world, sub=KEYCLOAK_ALICE_SUB))
    status, _, body = post_logout_token(world.door, token)
    assert status == 200, body
    assert keycloak_browser.check(f"{APP}/home")[0] == 302, "the Keycloak session ended"
    assert github_browser.check(f"{APP}/home")[0] == 200, "the GitHub session did not"
    # A token of another issuer (GitHub issues none) is refused: no provider vouches for it.
    forged = signed(world, logout_claims(world, iss=world.github.base_url, sub="583231"))
    assert post_logout_token(world.door, forged)[0] == 400
    assert github_browser.check(f"{APP}/home")[0] == 200


def test_a_session_counts_only_while_its_provider_is_configured(launch_portcullis, world, tmp_path, redis, keys: Keys):
    """Two replicas share Redis; the second no longer has the GitHub provider: a GitHub session is
    no session there, while the first still lets it in."""
    (tmp_path / "github-secret").write_text(GITHUB_CLIENT[1])
    (tmp_path / "google-secret").write_text(GOOGLE_CLIENT[1])
    github_entry = f"""  - name: github
    kind: github
    client_id: {GITHUB_CLIENT[0]}
    client_secret_file: {tmp_path / "github-secret"}
    github: {{base_url: "{world.github.base_url}", api_url: "{world.github.api_url}"}}
"""
    google_entry = f"""  - name: google
    kind: google
    issuer: {world.google.issuer}
    client_id: {GOOGLE_CLIENT[0]}
    client_secret_file: {tmp_path / "google-secret"}
"""
    common = f"""http_mode: traefik
sso:
  redirect_url: {CALLBACK}
  cookie_domain: sso.test
  cookie_secure: false
  allow_http_redirects: true
  sites: [.sso.test]
{redis_block(redis, [keys.old])}  providers:
"""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(POLICY.format(keycloak="https://unused", google=world.google.issuer)
                                     .replace("https://github.example", world.github.base_url))
    with_github = launch_portcullis(policies, settings=common + github_entry + google_entry)
    without_github = launch_portcullis(policies, settings=common + google_entry)
    world.github.user = ALICE_GH.login
    browser = Browser(with_github.http_port)
    start = world.start_url(browser, f"{APP}/home")
    status, _, page = browser.get(start, with_github.http_port)
    choice = next(href for _, href in links_of(page).links if "provider=github&" in href)
    status, msg, _ = browser.get(urllib.parse.urljoin(start, choice), with_github.http_port)
    status, msg, _ = browser.get(msg["Location"], world.github.server_address[1])
    status, msg, _ = browser.get(msg["Location"], with_github.http_port)
    assert (status, msg["Location"]) == (302, f"{APP}/home")
    assert browser.check(f"{APP}/home")[0] == 200
    elsewhere = Browser(without_github.http_port, browser.cookies)
    assert elsewhere.check(f"{APP}/home")[0] == 302, "its provider is gone: no session, the login again"
    assert browser.check(f"{APP}/home")[0] == 200, "where the provider is configured, the session still counts"
