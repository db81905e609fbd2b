"""A Google sign-in stand-in on loopback, following Google's documented OpenID Connect API
(https://developers.google.com/identity/openid-connect/openid-connect): discovery, the JWKS,
the authorization endpoint and the token endpoint issuing RS256 ID tokens with `hd` and
`email_verified`. It checks what Google checks: the client and its secret, the exact
redirect_uri, a code used once by the client it was issued to, and PKCE S256 when the login sent a
challenge.

The person who signs in is the server's `user` (set by the test): the authorization endpoint
approves them at once, as Google does for a signed-in account that already consented.

    server = GoogleServer(clients={"id": ("secret", "http://auth.sso.test/oauth2/callback")})
    with serving(server): ...   # harness.serving
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KID = "google-test-key-1"
ID_TOKEN_LIFETIME_S = 3600


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode()).digest())


@dataclass
class GoogleUser:
    sub: str
    email: str
    email_verified: bool = True
    hd: str | None = None  # the Google Workspace domain; None for a consumer account
    name: str = "Test Person"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str | None
    user: GoogleUser


class GoogleHandler(BaseHTTPRequestHandler):
    server: GoogleServer

    def log_message(self, *args) -> None:
        pass

    def send_json(self, status: int, document: dict) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/.well-known/openid-configuration":
            self.send_json(200, self.server.discovery())
        elif url.path == "/oauth2/v3/certs":
            self.send_json(200, self.server.jwks())
        elif url.path == "/o/oauth2/v2/auth":
            self.authorize(dict(urllib.parse.parse_qsl(url.query)))
        else:
            self.send_json(404, {"error": "not_found"})

    def authorize(self, query: dict) -> None:
        client = self.server.clients.get(query.get("client_id", ""))
        if client is None or query.get("redirect_uri") != client[1]:
            # Google shows an error page and never redirects to an unregistered URI.
            self.send_json(400, {"error": "redirect_uri_mismatch"})
            return
        if query.get("response_type") != "code" or "openid" not in query.get("scope", "").split():
            self.send_json(400, {"error": "invalid_request"})
            return
        if "code_challenge" in query and query.get("code_challenge_method") != "S256":
            self.send_json(400, {"error": "invalid_request"})
            return
        code = secrets.token_urlsafe(24)
        grant = Grant(query["client_id"], query["redirect_uri"], query.get("nonce"), query.get("code_challenge"),
                      self.server.user)
        with self.server.lock:
            self.server.codes[code] = grant
        back = urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
        self.send_response(302)
        self.send_header("Location", f"{query['redirect_uri']}?{back}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != "/token":
            self.send_json(404, {"error": "not_found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            decoded = base64.b64decode(basic[6:]).decode()
            user, _, password = decoded.partition(":")
            client_id, secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
        client = self.server.clients.get(client_id or "")
        if client is None or not secrets.compare_digest(client[0], secret or ""):
            self.send_json(401, {"error": "invalid_client"})
            return
        if form.get("grant_type") != "authorization_code":
            self.send_json(400, {"error": "unsupported_grant_type"})
            return
        with self.server.lock:
            grant = self.server.codes.pop(form.get("code", ""), None)  # a code is used once
        self.server.exchanges.append(form.get("code", ""))
        if grant is None or grant.client_id != client_id:
            self.send_json(400, {"error": "invalid_grant"})
            return
        if form.get("redirect_uri") != grant.redirect_uri:
            self.send_json(400, {"error": "invalid_grant", "error_description": "redirect_uri_mismatch"})
            return
        if grant.challenge is not None and s256(form.get("code_verifier", "")) != grant.challenge:
            self.send_json(400, {"error": "invalid_grant", "error_description": "code_verifier"})
            return
        self.send_json(200, {
            "access_token": secrets.token_urlsafe(32),
            "expires_in": 3599,
            "token_type": "Bearer",
            "scope": "openid email profile",
            "id_token": self.server.id_token(grant),
        })


class GoogleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, clients: dict[str, tuple[str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), GoogleHandler)
        self.clients = clients  # client_id -> (secret, registered redirect_uri)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.codes: dict[str, Grant] = {}
        self.exchanges: list[str] = []
        self.lock = threading.Lock()
        self.user = GoogleUser(sub="108000000000000000001", email="alice@corp.example", hd="corp.example")

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/o/oauth2/v2/auth",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/oauth2/v3/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["plain", "S256"],
        }

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()

        def integer(value: int) -> str:
            return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": KID,
                          "n": integer(numbers.n), "e": integer(numbers.e)}]}

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "azp": grant.client_id, "aud": grant.client_id, "sub": grant.user.sub,
                  "email": grant.user.email, "email_verified": grant.user.email_verified, "name": grant.user.name,
                  "iat": now, "exp": now + ID_TOKEN_LIFETIME_S}
        if grant.user.hd is not None:
            claims["hd"] = grant.user.hd
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        header = {"alg": "RS256", "kid": KID, "typ": "JWT"}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{b64url(signature)}"
