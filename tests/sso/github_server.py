"""A GitHub stand-in on loopback, following GitHub's documented OAuth app web flow
(https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps) and REST
API (GET /user, /user/emails, /user/orgs, /user/teams), in GitHub Enterprise Server's layout:
the web site at http://127.0.0.1:P and the API at http://127.0.0.1:P/api/v3.

It checks what GitHub checks: the client id and secret, the registered redirect_uri, a code used
once by the client it was issued to, PKCE S256 when the authorization sent a challenge; the
API wants `Authorization: Bearer`, a User-Agent and a supported `X-GitHub-Api-Version`, and
`/user/emails` the `user:email` scope. Like GitHub, the token endpoint answers 200 with an
`error` when it refuses a code, and JSON only when asked with `Accept: application/json`.
Paging: one page of everything; `per_page` is accepted and ignored.

The person who signs in is the server's `user` (a login of `users`, set by the test): the
authorization page approves at once, as GitHub does for an app the person authorized before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_PREFIX = "/api/v3"
API_VERSION = "2022-11-28"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class GithubUser:
    id: int
    login: str
    name: str | None = None
    emails: list[dict] = field(default_factory=list)  # {"email", "primary", "verified", "visibility"}
    orgs: list[str] = field(default_factory=list)
    teams: list[tuple[str, str]] = field(default_factory=list)  # (org, team slug)


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str | None
    user: GithubUser


class GithubHandler(BaseHTTPRequestHandler):
    server: GithubServer

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, document) -> None:
        self.answer(status, json.dumps(document).encode())

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/login/oauth/authorize":
            self.authorize(dict(urllib.parse.parse_qsl(url.query)))
        elif url.path.startswith(API_PREFIX + "/"):
            self.api(url.path.removeprefix(API_PREFIX))
        else:
            self.send_json(404, {"message": "Not Found"})

    def authorize(self, query: dict) -> None:
        client = self.server.clients.get(query.get("client_id", ""))
        if client is None:
            self.send_json(404, {"message": "Not Found"})
            return
        redirect_uri = query.get("redirect_uri", client[1])
        if redirect_uri != client[1]:
            # GitHub shows "The redirect_uri is not associated with this application" and stays.
            self.send_json(400, {"error": "redirect_uri_mismatch"})
            return
        if "code_challenge" in query and query.get("code_challenge_method") != "S256":
            self.send_json(400, {"error": "invalid_request"})
            return
        code = secrets.token_hex(10)
        user = self.server.users[self.server.user]
        grant = Grant(query["client_id"], redirect_uri, query.get("scope", ""), query.get("code_challenge"), user)
        with self.server.lock:
            self.server.codes[code] = grant
        back = urllib.parse.urlencode({"code": code, "state": query.get("state", "")})
        self.send_response(302)
        self.send_header("Location", f"{redirect_uri}?{back}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path != "/login/oauth/access_token":
            self.send_json(404, {"message": "Not Found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        answer = self.exchange(form)
        if "application/json" in self.headers.get("Accept", ""):
            self.send_json(200, answer)
        else:
            self.answer(200, urllib.parse.urlencode(answer).encode(), "application/x-www-form-urlencoded")

    def exchange(self, form: dict) -> dict:
        client = self.server.clients.get(form.get("client_id", ""))
        if client is None or not secrets.compare_digest(client[0], form.get("client_secret", "")):
            return {"error": "incorrect_client_credentials"}
        with self.server.lock:
            grant = self.server.codes.pop(form.get("code", ""), None)  # a code is used once
        if grant is None or grant.client_id != form["client_id"]:
            return {"error": "bad_verification_code"}
        if "redirect_uri" in form and form["redirect_uri"] != grant.redirect_uri:
            return {"error": "redirect_uri_mismatch"}
        if grant.challenge is not None and s256(form.get("code_verifier", "")) != grant.challenge:
            return {"error": "bad_verification_code"}
        token = "gho_" + secrets.token_hex(18)
        with self.server.lock:
            self.server.tokens[token] = grant
        return {"access_token": token, "token_type": "bearer", "scope": grant.scope.replace(" ", ",")}

    def api(self, path: str) -> None:
        self.server.api_requests.append((path, dict(self.headers.items())))
        if not self.headers.get("User-Agent"):
            self.send_json(403, {"message": "Request forbidden by administrative rules. Please make sure your "
                                            "request has a User-Agent header"})
            return
        version = self.headers.get("X-GitHub-Api-Version")
        if version is not None and version != API_VERSION:
            self.send_json(400, {"message": f"API version {version} is not supported."})
            return
        authorization = self.headers.get("Authorization", "")
        grant = self.server.tokens.get(authorization.removeprefix("Bearer ")) if authorization.startswith("Bearer ") else None
        if grant is None:
            self.send_json(401, {"message": "Bad credentials"})
            return
        user = grant.user
        if path == "/user":
            self.send_json(200, {"login": user.login, "id": user.id, "type": "User", "name": user.name,
                                 "email": None, "site_admin": False})
        elif path == "/user/emails":
            if "user:email" not in grant.scope.split() and "user" not in grant.scope.split():
                self.send_json(404, {"message": "Not Found"})
                return
            self.send_json(200, user.emails)
        elif path == "/user/orgs":
            self.send_json(200, [{"login": org, "id": 1000 + n} for n, org in enumerate(user.orgs)])
        elif path == "/user/teams":
            self.send_json(200, [{"slug": slug, "name": slug, "organization": {"login": org}}
                                 for org, slug in user.teams])
        else:
            self.send_json(404, {"message": "Not Found"})


class GithubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, clients: dict[str, tuple[str, str]], users: list[GithubUser]) -> None:
        super().__init__(("127.0.0.1", 0), GithubHandler)
        self.clients = clients  # client_id -> (secret, registered callback URL)
        self.users = {user.login: user for user in users}
        self.user = users[0].login  # who signs in next
        self.codes: dict[str, Grant] = {}
        self.tokens: dict[str, Grant] = {}
        self.api_requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX
