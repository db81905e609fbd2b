"""Browser single sign-on helpers shared by the suites of tests/sso (and, through
`harness.sso_helpers`, tests/e2e and tests/proxies): a cookie-keeping client that
stands in for the browser and for Traefik, the login at the real OIDC provider of tests/oidc, the
policy, and the settings of a server that offers logins.

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
from pathlib import Path

from harness import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "jwt"))
from oidc_idp import Idp, start_idp  # noqa: E402

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
            # In place: browsers made with the same list (one browser, several replicas) share it.
            self.cookies[:] = [c for c in self.cookies if not (c.name == name and c.domain == domain and c.path == path)]
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

    def page_at_idp(self, browser: Browser, url: str) -> tuple[str, bytes | None]:
        """Follows the provider's redirects from `url`: the callback URL and None once there, else
        the URL and body of the page the provider shows."""
        for _ in range(MAX_HOPS):
            if url.startswith(CALLBACK):
                return url, None
            status, msg, body = browser.get(url, self.idp_port)
            if status not in (302, 303):
                assert status == 200, (status, body[:500])
                return url, body
            url = urllib.parse.urljoin(url, msg["Location"])
        raise AssertionError(f"neither a page nor the callback after {MAX_HOPS} hops")

    def log_in_at_idp(self, browser: Browser, url: str, user: str = "alice") -> str:
        for _ in range(MAX_HOPS):
            url, page = self.page_at_idp(browser, url)
            if page is None:
                return url
            action = re.search(rb'action="([^"]+)"', page)
            assert action, page[:500]
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



@dataclass
class Provider:
    """The OIDC provider, the policies naming it, and the client secret portcullis logs in with."""

    idp: Idp
    policies: Path
    secret: Path

    def settings(self, extra: str = "") -> str:
        """A server's settings offering logins at this provider; `extra` is added to the `sso` block."""
        return f"""http_mode: traefik
sso:
  issuer: {self.idp.issuer}
  client_id: portcullis-sso
  client_secret_file: {self.secret}
  redirect_url: {CALLBACK}
  cookie_domain: sso.test
  cookie_secure: false
  allow_http_redirects: true
  sites: [.sso.test]
{extra}"""

    def sso(self, door: int) -> Sso:
        """The login flows through the HTTP door on `door`."""
        return Sso(door, self.idp.port, self.idp.issuer)
