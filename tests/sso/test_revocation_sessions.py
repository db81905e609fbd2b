"""Revocation with browser sign-on: the provider's back-channel logout of a login also revokes the
bearer tokens of that login's `sid`, and a subject revoked at the admin endpoint loses its browser
sessions. The real OIDC provider of tests/oidc, the cookie-keeping client of tests/sso, portcullis
in Traefik's forward-auth mode with a `RequestAuthentication` for the provider's bearer tokens.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
import uuid

import pytest
from sso_shared import Provider
from test_logout import SUBJECT, URL, logout_claims, post_logout_token, signed

ADMIN_TOKEN = "adm-91c2d4e6f8a0b1c3"
REVOKED = b"Token has been revoked"

REQUEST_AUTHENTICATION = """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: provider-tokens, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: {issuer}
"""


@pytest.fixture(scope="module")
def server(launch_portcullis, provider: Provider, tmp_path_factory):
    """Sessions in memory, bearer tokens of the provider verified too, revocation on."""
    work = tmp_path_factory.mktemp("sso-revocation")
    policies = work / "policies"
    shutil.copytree(provider.policies, policies)
    (policies / "provider-tokens.yaml").write_text(REQUEST_AUTHENTICATION.format(issuer=provider.idp.issuer))
    token_file = work / "admin-token"
    token_file.write_text(ADMIN_TOKEN)
    settings = provider.settings() + f"revocation:\n  admin_token_file: {token_file}\n"
    return launch_portcullis(policies, settings=settings)


def bearer_check(sso, token: str):
    """A forward-auth check of URL from a script presenting `token`."""
    return sso.browser().check(URL, accept="application/json", extra={"Authorization": f"Bearer {token}"})


def metric(server, series: str) -> float | None:
    status, body = server.admin_get("/metrics")
    assert status == 200
    return next((float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(series + " ")), None)


def test_the_providers_back_channel_logout_also_revokes_the_bearer_tokens_of_the_login(server, provider):
    sso = provider.sso(server.http_port)
    now, sid = int(time.time()), str(uuid.uuid4())
    access = {"iss": provider.idp.issuer, "sub": SUBJECT, "sid": sid, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    in_login = signed(provider, access)
    other_login = signed(provider, {**access, "sid": str(uuid.uuid4()), "jti": str(uuid.uuid4())})
    assert bearer_check(sso, in_login)[0] == 200
    status, _, _ = post_logout_token(sso.door, signed(provider, logout_claims(provider, sid=sid)))
    assert status == 200
    status, _, body = bearer_check(sso, in_login)
    assert (status, body) == (401, REVOKED)
    assert bearer_check(sso, other_login)[0] == 200, "another login's token stays"
    assert metric(server, 'portcullis_revocation_additions_total{source="sso_logout"}') == 1.0


def test_a_subject_revoked_at_the_admin_endpoint_loses_its_browser_session(server, provider):
    sso = provider.sso(server.http_port)
    browser = sso.browser()
    assert sso.navigate(browser, URL)[0] == 200
    body = json.dumps({"issuer": provider.idp.issuer, "sub": SUBJECT}).encode()
    request = urllib.request.Request(server.admin_url("/revocations"), data=body, method="POST")
    request.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    status, headers, _ = browser.check(URL)
    assert status == 302 and "/oauth2/start?rd=" in headers["Location"], "a revoked session is no session: log in again"
    # A login within the revocation's second counts as before it (`iat` is in whole seconds).
    deadline = time.monotonic() + 10
    while sso.navigate(browser, URL)[0] != 200:
        assert time.monotonic() < deadline, "hang guard: a login after the revocation is not revoked"
