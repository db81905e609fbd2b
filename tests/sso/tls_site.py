"""The pieces of the Chromium login tests: a throw-away CA and `*.sso.test` certificate, the Caddyfile
that terminates TLS for the apps and the login endpoints, apps that show who they were told the
visitor is, and the steps of a login in the browser."""

from __future__ import annotations

import base64
import datetime
import html
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import REPO_ROOT, RecordingUpstream, Seen, free_port
from sso_shared import POLICY, Idp, start_idp

sys.path.insert(0, str(REPO_ROOT / "tests" / "proxies"))
from proxy_harness import CaddyProxy, start_caddy  # noqa: E402

DOMAIN = "sso.test"
CERTIFICATE_LIFETIME = datetime.timedelta(days=1)
IDENTITY_HEADERS = (
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-User",
)


@dataclass
class Certificate:
    """A PEM chain (leaf, then CA) and key for `*.sso.test`, and the leaf's SPKI pin for Chromium."""

    chain: Path
    key: Path
    spki_sha256: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(directory: Path) -> Certificate:
    """A throw-away CA and the wildcard certificate it signs, written into `directory`."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("portcullis test CA"))
        .issuer_name(_name("portcullis test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(f"*.{DOMAIN}"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"*.{DOMAIN}")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    chain, key = directory / "sso.test.pem", directory / "sso.test.key"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    spki = leaf_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return Certificate(chain, key, base64.b64encode(digest.finalize()).decode())


# The recipe of docs/sso.md ("Caddy with TLS"), with its addresses filled in. Caddy 2.6 (Debian
# bookworm) copies a header the answer lacks as its placeholder's text: the header_regexp lines
# drop such a header; Caddy 2.7 and later need them no more but are not harmed by them.
CADDYFILE = """{
	admin off
	auto_https off
	servers {
		protocols h1 h2
	}
}

(portcullis) {
	# A client's own copies of the identity headers never reach the app.
	request_header -X-Auth-Request-User
	request_header -X-Auth-Request-Email
	request_header -X-Auth-Request-Groups
	request_header -X-Auth-Request-Preferred-Username
	request_header -X-Auth-User
	request_header -X-Envoy-Auth-Headers-To-Remove

	forward_auth PORTCULLIS {
		uri /
		copy_headers X-Auth-Request-User X-Auth-Request-Email X-Auth-Request-Groups X-Auth-Request-Preferred-Username X-Auth-User Cookie X-Envoy-Auth-Headers-To-Remove
	}

	@no_user header_regexp X-Auth-Request-User ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_user -X-Auth-Request-User
	@no_email header_regexp X-Auth-Request-Email ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_email -X-Auth-Request-Email
	@no_groups header_regexp X-Auth-Request-Groups ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_groups -X-Auth-Request-Groups
	@no_username header_regexp X-Auth-Request-Preferred-Username ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_username -X-Auth-Request-Preferred-Username
	@no_auth_user header_regexp X-Auth-User ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_auth_user -X-Auth-User
	@no_cookie header_regexp Cookie ^\\{http\\.reverse_proxy\\.header\\.
	request_header @no_cookie -Cookie

	# The session cookie was the only cookie: portcullis asks for the Cookie header to go.
	@strip_cookie header_regexp X-Envoy-Auth-Headers-To-Remove (?i)(^|,)\\s*cookie\\s*(,|$)
	request_header @strip_cookie -Cookie
	request_header -X-Envoy-Auth-Headers-To-Remove
}
"""

SITE = """
https://HOST:PORT {
	bind 127.0.0.1
	tls CHAIN KEY
	route {
		import portcullis
		reverse_proxy UPSTREAM
	}
}
"""

LOGIN_SITE = """
https://HOST:PORT {
	bind 127.0.0.1
	tls CHAIN KEY
	# The login endpoints: no forward_auth.
	reverse_proxy /oauth2/* PORTCULLIS
}
"""


def _fill(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace(name, value)
    return template


def start_tls_caddy(workdir: Path, certificate: Certificate, port: int, portcullis: int, apps: dict[str, int]) -> CaddyProxy:
    """Caddy on 127.0.0.1:port serving `https://auth.sso.test:port` (the login endpoints) and
    `https://NAME.sso.test:port` for each app name, each app behind portcullis's forward auth."""
    common = {
        "PORTCULLIS": f"127.0.0.1:{portcullis}",
        "PORT": str(port),
        "CHAIN": str(certificate.chain),
        "KEY": str(certificate.key),
    }
    config = _fill(CADDYFILE, common)
    config += _fill(LOGIN_SITE, {**common, "HOST": f"auth.{DOMAIN}"})
    for name, upstream in apps.items():
        config += _fill(SITE, {**common, "HOST": f"{name}.{DOMAIN}", "UPSTREAM": f"127.0.0.1:{upstream}"})
    return start_caddy(config, port, workdir, "caddy-tls")


class _IdentityPage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        headers = [(name.lower(), value) for name, value in self.headers.items()]
        self.server.seen.append(Seen(self.command, self.path, headers))
        shown = "".join(
            f'<p id="{name.lower()}">{html.escape(self.headers.get(name, ""))}</p>' for name in IDENTITY_HEADERS
        )
        body = f"<!doctype html><title>{self.server.name}</title><h1>{self.server.name}</h1>{shown}".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class IdentityApp(RecordingUpstream):
    """A protected app: remembers every request and answers a page showing the identity headers it got."""

    def __init__(self, name: str) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", 0), _IdentityPage)
        self.seen: list[Seen] = []
        self.name = name

    def last(self, path: str) -> Seen:
        """The last request for `path` that reached the app (the browser asks for /favicon.ico too)."""
        return next(request for request in reversed(self.seen) if request.path == path)


def requested_urls(context) -> list[str]:
    """Every URL the context requests from now on."""
    urls: list[str] = []
    context.on("request", lambda request: urls.append(request.url))
    return urls


def log_in_on_form(page, user: str = "alice") -> None:
    """Fill and submit the IdP's login form the page shows (the IdP asks no consent of this client)."""
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", user)
    page.click("button[type=submit]")


def is_login_form(page) -> bool:
    return "/interaction/" in page.url and page.locator("input[name=password]").count() == 1


@dataclass
class LoginSite:
    """What a TLS login test serves at https://*.sso.test:`port`: the real OIDC provider sending
    logins back to the callback there, the policies admitting its people, portcullis's settings."""

    port: int
    idp: Idp
    policies: Path
    settings: str


def login_site(work: Path, http_mode: str) -> LoginSite:
    """A free port, the provider (logging to `work`), the people policy naming it and the `sso`
    settings of one provider for every `*.sso.test` site, in `http_mode`."""
    port = free_port()
    callback = f"https://auth.{DOMAIN}:{port}/oauth2/callback"
    idp = start_idp(work / f"idp-{work.name}.log", sso_redirect_uri=callback)
    (work / "policies").mkdir()
    (work / "policies" / "people.yaml").write_text(POLICY.format(issuer=idp.issuer))
    secret = work / "client-secret"
    secret.write_text("sso-secret\n")
    settings = f"""http_mode: {http_mode}
sso:
  issuer: {idp.issuer}
  client_id: portcullis-sso
  client_secret_file: {secret}
  redirect_url: {callback}
  cookie_domain: {DOMAIN}
  sites: [.{DOMAIN}]
"""
    return LoginSite(port, idp, work / "policies", settings)
