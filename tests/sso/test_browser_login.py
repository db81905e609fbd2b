"""Browser single sign-on over real sockets: portcullis's HTTP door in Traefik's forward-auth mode,
the real OIDC provider of tests/oidc (authorization code with PKCE, its login form), and a small
cookie-keeping client standing in for the browser and for Traefik.

Hosts: app1.sso.test and app2.sso.test are protected sites, auth.sso.test serves the login
endpoints (Traefik's router without the middleware); none is resolved: every request to them is
sent to portcullis's HTTP door with the host in its headers, as Traefik sends it.
"""

from __future__ import annotations

import http.client
import re
import sys
import urllib.parse
from dataclasses import dataclass, field

import pytest
from harness import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "jwt"))
from oidc_idp import start_idp  # noqa: E402

AUTH_HOST = "auth.sso.test"
CALLBACK = f"http://{AUTH_HOST}/oauth2/callback"
SESSION_COOKIE = "_portcullis_session"
LOGIN_URL_HEADER = "x-portcullis-login-url"
HTML = "text/html,application/xhtml+xml,*/*;q=0.8"
MAX_HOPS = 12


@dataclass
class Cookie:
    name: str
    value: str
    domain: str
    host_only: bool
    path: str


@dataclass
class Browser:
    """Keeps cookies by domain and path as a browser does, and talks to portcullis as Traefik would."""

    door: int  # portcullis's HTTP door on 127.0.0.1
    cookies: list[Cookie] = field(default_factory=list)

    def cookie_header(self, host: str, path: str) -> str:
        def matches(cookie: Cookie) -> bool:
            domain_ok = host == cookie.domain or (not cookie.host_only and host.endswith("." + cookie.domain))
            return domain_ok and path.startswith(cookie.path)

        return "; ".join(f"{c.name}={c.value}" for c in self.cookies if matches(c))

    def absorb(self, host: str, set_cookies: list[str]) -> None:
        for line in set_cookies:
            name_value, *attributes = [part.strip() for part in line.split(";")]
            name, _, value = name_value.partition("=")
            attrs = {k.lower(): v for k, _, v in (a.partition("=") for a in attributes)}
            domain = attrs.get("domain", "").lstrip(".") or host
            path = attrs.get("path", "/")
            self.cookies = [c for c in self.cookies if not (c.name == name and c.domain == domain and c.path == path)]
            if attrs.get("max-age") != "0":
                self.cookies.append(Cookie(name, value, domain, "domain" not in attrs, path))

    def value_of(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def send(self, port: int, method: str, target: str, host: str, headers: dict, body: str | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Host": host, **headers}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, response.msg, data

    def check(self, url: str, *, method: str = "GET", accept: str = HTML, extra: dict | None = None):
        """The forward-auth request Traefik sends for a request to `url`."""
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {
            "X-Forwarded-Method": method,
            "X-Forwarded-Proto": parts.scheme,
            "X-Forwarded-Host": parts.netloc,
            "X-Forwarded-Uri": target,
            "Accept": accept,
            **(extra or {}),
        }
        cookie = self.cookie_header(parts.netloc, parts.path or "/")
        if cookie:
            headers["Cookie"] = cookie
        return self.send(self.door, "GET", "/", "portcullis", headers)

    def get(self, url: str, idp_port: int, *, method: str = "GET", body: str | None = None):
        """A navigation to a login endpoint (routed to portcullis) or to the IdP; cookies kept."""
        parts = urllib.parse.urlsplit(url)
        port = self.door if parts.hostname == AUTH_HOST else idp_port
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Accept": HTML}
        cookie = self.cookie_header(parts.hostname, parts.path or "/")
        if cookie:
            headers["Cookie"] = cookie
        status, msg, data = self.send(port, method, target, parts.netloc, headers, body)
        self.absorb(parts.hostname, msg.get_all("Set-Cookie") or [])
        return status, msg, data


@dataclass
class Sso:
    door: int
    idp_port: int
    issuer: str

    def browser(self) -> Browser:
        return Browser(self.door)

    def log_in_at_idp(self, browser: Browser, url: str, user: str = "alice") -> str:
        for _ in range(MAX_HOPS):
            if url.startswith(CALLBACK):
                return url
            status, msg, body = browser.get(url, self.idp_port)
            if status in (302, 303):
                url = urllib.parse.urljoin(url, msg["Location"])
                continue
            assert status == 200, (status, body[:500])
            action = re.search(rb'action="([^"]+)"', body)
            assert action, body[:500]
            form = urllib.parse.urlencode({"prompt": "login", "login": user, "password": user})
            status, msg, body = browser.get(urllib.parse.urljoin(url, action.group(1).decode()), self.idp_port, method="POST", body=form)
            assert status in (302, 303), (status, body[:500])
            url = urllib.parse.urljoin(url, msg["Location"])
        raise AssertionError(f"no callback after {MAX_HOPS} hops")

    def navigate(self, browser: Browser, url: str, user: str = "alice"):
        """Open `url` as a browser: when sent to log in, log in and come back; the final check's answer."""
        status, msg, body = browser.check(url)
        if status != 302:
            return status, msg, body
        callback = self.log_in_at_idp(browser, self.to_idp_url(browser, msg["Location"]), user)
        status, msg, body = browser.get(callback, self.idp_port)
        assert status == 302, (status, body)
        assert msg["Location"] == url
        return browser.check(url)

    def to_idp_url(self, browser: Browser, start: str) -> str:
        status, msg, body = browser.get(start, self.idp_port)
        assert status == 302, (status, body)
        return msg["Location"]


POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: people, namespace: istio-system}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{issuer}/*"]}}}}]
    to: [{{operation: {{notPaths: ["/admin*"]}}}}]
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
  - to: [{{operation: {{paths: [/public]}}}}]
"""


@pytest.fixture(scope="module")
def sso(launch_portcullis, tmp_path_factory) -> Sso:
    work = tmp_path_factory.mktemp("sso")
    idp = start_idp(work / "idp.log", sso_redirect_uri=CALLBACK)
    (work / "policies").mkdir()
    (work / "policies" / "people.yaml").write_text(POLICY.format(issuer=idp.issuer))
    secret = work / "client-secret"
    secret.write_text("sso-secret\n")
    settings = f"""http_mode: traefik
sso:
  issuer: {idp.issuer}
  client_id: portcullis-sso
  client_secret_file: {secret}
  redirect_url: {CALLBACK}
  cookie_domain: sso.test
  cookie_secure: false
  allow_http_redirects: true
  sites: [.sso.test]
"""
    server = launch_portcullis(work / "policies", settings=settings)
    yield Sso(server.http_port, idp.port, idp.issuer)
    assert idp.stop() == 0


def test_a_person_logs_in_once_and_every_subdomain_knows_them_by_their_identity_headers(sso):
    browser = sso.browser()
    browser.cookies.append(Cookie("theme", "dark", "app1.sso.test", True, "/"))
    status, headers, _ = sso.navigate(browser, "http://app1.sso.test/dashboard?tab=2")
    assert status == 200
    assert headers["X-Auth-Request-User"] == "0b2f5c3e-6a43-4c1e-9d3b-6f1f3a0c2a11"
    assert headers["X-Auth-Request-Email"] == "alice@example.com"
    assert headers["X-Auth-Request-Groups"] == "user"
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
    assert headers["X-Auth-User"] == "alice@example.com"
    assert headers["Cookie"] == "theme=dark", "the session cookie is taken out of what the app receives"
    assert SESSION_COOKIE not in headers.get("X-Envoy-Auth-Headers-To-Remove", "")
    status, headers, _ = browser.check("http://app2.sso.test/", extra={"X-Auth-Request-User": "admin"})
    assert status == 200, "another subdomain without a new login"
    assert headers["X-Auth-Request-Preferred-Username"] == "alice"
    assert headers["X-Auth-Request-User"] != "admin", "the client's copy is overwritten"
    assert "cookie" in headers["X-Envoy-Auth-Headers-To-Remove"].split(","), "only the session cookie: none goes on"


def test_claims_of_the_login_decide_as_for_tokens(sso):
    alice, admin = sso.browser(), sso.browser()
    assert sso.navigate(alice, "http://app1.sso.test/")[0] == 200
    assert alice.check("http://app1.sso.test/admin")[0] == 403, "logged in, not in the admin group: no new login"
    assert sso.navigate(admin, "http://app1.sso.test/admin", user="admin")[0] == 200


def test_signing_out_sends_the_person_to_log_in_again_on_every_subdomain(sso):
    browser = sso.browser()
    assert sso.navigate(browser, "http://app1.sso.test/")[0] == 200
    session = browser.value_of(SESSION_COOKIE)
    status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/sign_out", sso.idp_port)
    assert status == 200
    assert browser.value_of(SESSION_COOKIE) is None
    for url in ("http://app1.sso.test/", "http://app2.sso.test/"):
        status, headers, _ = browser.check(url)
        assert status == 302 and "/oauth2/start?rd=" in headers["Location"], url
    # The old cookie, kept by a thief, opens nothing either.
    thief = sso.browser()
    thief.cookies.append(Cookie(SESSION_COOKIE, session, "sso.test", False, "/"))
    assert thief.check("http://app1.sso.test/")[0] == 302


def test_requests_that_are_not_browser_navigations_get_401_with_the_login_url(sso):
    browser = sso.browser()
    for case, kwargs in [
        ("XHR", {"extra": {"X-Requested-With": "XMLHttpRequest"}}),
        ("API call", {"accept": "application/json"}),
        ("form post", {"method": "POST"}),
    ]:
        status, headers, _ = browser.check("http://app1.sso.test/api", **kwargs)
        assert status == 401, case
        assert headers[LOGIN_URL_HEADER].startswith(f"http://{AUTH_HOST}/oauth2/start?rd="), case
    status, headers, _ = browser.check("http://app1.sso.test/public", extra={"X-Auth-Request-User": "admin"})
    assert status == 200, "a path the policies open needs no login"
    removed = headers["X-Envoy-Auth-Headers-To-Remove"].split(",")
    assert "x-auth-request-user" in removed and "x-auth-user" in removed, "client copies never reach the app"


def test_user_info_shows_the_signed_in_person(sso):
    browser = sso.browser()
    sso.navigate(browser, "http://app1.sso.test/")
    status, _, body = browser.get(f"http://{AUTH_HOST}/oauth2/userinfo", sso.idp_port)
    assert status == 200 and b'"preferred_username":"alice"' in body, body
    assert sso.browser().get(f"http://{AUTH_HOST}/oauth2/userinfo", sso.idp_port)[0] == 401


def test_a_redirect_target_outside_the_allowed_domains_starts_no_login(sso):
    browser = sso.browser()
    for target in ["//evil.example", "/\\evil.example", "http://evilsso.test/", "http://sso.test@evil.example/"]:
        rd = urllib.parse.quote(target, safe="")
        status, _, _ = browser.get(f"http://{AUTH_HOST}/oauth2/start?rd={rd}", sso.idp_port)
        assert status == 400, target
    assert browser.cookies == [], "no login transaction, no cookie"


def test_a_callback_with_another_state_or_from_another_browser_is_refused(sso):
    starter = sso.browser()
    callback = sso.log_in_at_idp(starter, sso.to_idp_url(starter, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    # The code and state, finished by a browser that did not start the login (login CSRF).
    other = sso.browser()
    status, _, _ = other.get(callback, sso.idp_port)
    assert status == 400
    assert other.value_of(SESSION_COOKIE) is None
    # The state changed: no such login.
    tampered = re.sub(r"state=[^&]+", "state=" + "A" * 43, callback)
    status, _, _ = starter.get(tampered, sso.idp_port)
    assert status == 400 and starter.value_of(SESSION_COOKIE) is None
    # A state that is no state at all never reaches a cookie header.
    injected = re.sub(r"state=[^&]+", "state=" + urllib.parse.quote("x; Domain=evil.example"), callback)
    status, headers, _ = starter.get(injected, sso.idp_port)
    assert status == 400 and headers.get_all("Set-Cookie") is None


def test_a_replayed_callback_opens_no_second_session(sso):
    browser = sso.browser()
    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    saved = list(browser.cookies)
    status, _, _ = browser.get(callback, sso.idp_port)
    assert status == 302
    first_session = browser.value_of(SESSION_COOKIE)
    # The same request again, with the login's cookie as it was (a retry, or a replay).
    replayer = sso.browser()
    replayer.cookies = saved
    status, _, _ = replayer.get(callback, sso.idp_port)
    assert status == 400
    assert replayer.value_of(SESSION_COOKIE) is None
    assert browser.check("http://app1.sso.test/")[0] == 200, "the first session still works"
    assert first_session


def test_a_tampered_or_unknown_session_cookie_is_treated_as_no_session(sso):
    browser = sso.browser()
    assert sso.navigate(browser, "http://app1.sso.test/")[0] == 200
    real = browser.value_of(SESSION_COOKIE)
    flipped = ("B" if real[0] != "B" else "C") + real[1:]
    for value in [flipped, "A" * 43, "not-a-session", real + "A"]:
        forger = sso.browser()
        forger.cookies.append(Cookie(SESSION_COOKIE, value, "sso.test", False, "/"))
        assert forger.check("http://app1.sso.test/")[0] == 302, value


def test_two_logins_interleaved_in_two_tabs_both_succeed(sso):
    browser = sso.browser()
    tab1 = sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=" + urllib.parse.quote("http://app1.sso.test/one", safe=""))
    tab2 = sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=" + urllib.parse.quote("http://app2.sso.test/two", safe=""))
    callback2 = sso.log_in_at_idp(browser, tab2)
    callback1 = sso.log_in_at_idp(browser, tab1)
    for callback, target in [(callback2, "http://app2.sso.test/two"), (callback1, "http://app1.sso.test/one")]:
        status, headers, body = browser.get(callback, sso.idp_port)
        assert status == 302, body
        assert headers["Location"] == target
    assert browser.check("http://app1.sso.test/one")[0] == 200


def test_a_planted_session_id_is_replaced_at_login_and_ends(sso):
    attacker = sso.browser()
    assert sso.navigate(attacker, "http://app1.sso.test/", user="admin")[0] == 200
    planted = attacker.value_of(SESSION_COOKIE)
    victim = sso.browser()
    victim.cookies.append(Cookie(SESSION_COOKIE, planted, "sso.test", False, "/"))
    victim.cookies.append(Cookie("x", "1", "app2.sso.test", True, "/"))
    # The victim is let in as the attacker at first (the cookie is valid), then logs in as alice.
    status, headers, _ = victim.check("http://app2.sso.test/")
    assert status == 200 and headers["X-Auth-Request-Preferred-Username"] == "admin"
    callback = sso.log_in_at_idp(victim, sso.to_idp_url(victim, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"), user="alice")
    assert victim.get(callback, sso.idp_port)[0] == 302
    assert victim.value_of(SESSION_COOKIE) not in (None, planted), "a new id at login"
    assert victim.check("http://app2.sso.test/")[1]["X-Auth-Request-Preferred-Username"] == "alice"
    assert attacker.check("http://app1.sso.test/")[0] == 302, "the planted session ended"


def test_the_session_cookie_holds_only_an_opaque_id_for_the_whole_cookie_domain(sso):
    browser = sso.browser()
    callback = sso.log_in_at_idp(browser, sso.to_idp_url(browser, f"http://{AUTH_HOST}/oauth2/start?rd=%2F"))
    login_cookie = next(c for c in browser.cookies if c.name.startswith(f"{SESSION_COOKIE}_login_"))
    assert login_cookie.host_only and login_cookie.path == "/oauth2/", "the login's own cookie stays with the endpoints"
    status, headers, _ = browser.get(callback, sso.idp_port)
    assert status == 302
    set_cookies = headers.get_all("Set-Cookie")
    session = next(line for line in set_cookies if line.startswith(f"{SESSION_COOKIE}="))
    value, *attributes = [part.strip() for part in session.split(";")]
    assert re.fullmatch(rf"{SESSION_COOKIE}=[A-Za-z0-9_-]{{43}}", value), "256 random bits, nothing else"
    assert {"Path=/", "HttpOnly", "SameSite=Lax", "Domain=sso.test"} <= set(attributes), attributes
    assert any(line.startswith(f"{login_cookie.name}=;") and "Max-Age=0" in line for line in set_cookies), "the login's cookie is cleared"
