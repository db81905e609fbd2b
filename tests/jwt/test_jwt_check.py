"""JWT authentication end to end: a real OIDC provider in Keycloak's layout, portcullis, and Envoy's Check.

The IdP is oidc-provider (tests/oidc/idp.mjs); Check requests are built from Envoy's own protos.
Tokens that no IdP would issue (expired, forged, malformed) are built here with keys the test owns:
a second issuer, TEST_ISSUER, publishes those keys inline (`jwks`) in the RequestAuthentication.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
from check_requests import UNPROTECTED
from cryptography.exceptions import InvalidSignature
from harness import http_get
from jwt_checks import (
    AUDIENCE_NOT_ALLOWED,
    BAD_FORMAT,
    EXPIRED,
    GRPC_PERMISSION_DENIED,
    JWKS_FETCH_FAILED,
    KEY_NOT_FOUND,
    NOT_YET_VALID,
    UNKNOWN_ISSUER,
    VERIFICATION_FAILS,
    ask,
    assert_allowed,
    assert_invalid_token,
    assert_rbac_denied,
    metric_value,
    metrics_text,
    realm_of,
)
from jwt_policies import ACCESS_HEADER, ISSUED_AT_HEADER, OUTPUT_HEADERS, PAYLOAD_HEADER, ROLES_HEADER, USER_HEADER, VERIFIED_HEADER
from jwt_tokens import (
    UNCONFIGURED_ISSUER,
    SigningKey,
    b64url_json,
    claims,
    decode_part,
    hs256_token,
    public_pem_of,
    unsigned_token,
    verify_rs256,
    with_payload,
    with_signature_of,
)

ROTATION_DEADLINE_S = 2.5  # a token under a freshly rotated kid is accepted within this
SERVER_REFETCH_LIMIT_S = 5.0  # the server refetches an issuer's JWKS for unknown kids at most this often
READINESS_BOUND_S = 10.0  # the server's default wait for an issuer that never answers
CACHE_HITS = "portcullis_token_cache_hits_total"
JWKS_FETCHES = "portcullis_jwks_fetches_total"
CHECKS = "portcullis_checks_total"


def table(cases: dict) -> list:
    """pytest params from {test id: (arguments...)}."""
    return [pytest.param(*arguments, id=name) for name, arguments in cases.items()]


def published_kids(idp) -> list[str]:
    return [key["kid"] for key in idp.published_jwks()["keys"]]


def rsa_jwk(idp, kid: str) -> dict:
    return next(key for key in idp.published_jwks()["keys"] if key["kid"] == kid)


def wait_allowed(authz, method: str, path: str, token: str, deadline_s: float):
    """Check until allowed or deadline_s passed; returns (last outcome, seconds taken)."""
    began = time.monotonic()
    while True:
        outcome = ask(authz, method, path, token=token)
        elapsed = time.monotonic() - began
        if outcome.allowed or elapsed > deadline_s:
            return outcome, elapsed
        time.sleep(0.1)


# ================================================================ the IdP alone


def test_idp_serves_keycloak_discovery(idp):
    assert idp.issuer == f"http://127.0.0.1:{idp.port}/realms/jobs"
    status, body, _ = http_get(f"{idp.issuer}/.well-known/openid-configuration")
    assert status == 200
    discovery = json.loads(body)
    assert discovery["issuer"] == idp.issuer
    assert discovery["jwks_uri"] == f"{idp.issuer}/protocol/openid-connect/certs"
    assert discovery["token_endpoint"] == f"{idp.issuer}/protocol/openid-connect/token"
    assert "password" in discovery["grant_types_supported"]


def test_idp_issues_keycloak_shaped_rs256_access_tokens(idp):
    token = idp.token("admin")
    header, payload = decode_part(token, 0), decode_part(token, 1)
    assert header["alg"] == "RS256"
    assert header["kid"] == idp.keys()["kid"]
    verify_rs256(token, rsa_jwk(idp, header["kid"]))  # signed by the key the JWKS publishes
    assert payload["iss"] == idp.issuer
    assert payload["aud"] == ["jobs-api", "account"]
    assert payload["azp"] == "jobs-web"
    assert payload["sub"] and payload["typ"] == "Bearer"
    assert payload["scope"].split() == ["openid", "profile", "email"]
    assert payload["preferred_username"] == "admin"
    assert {"user", "admin"} <= set(payload["realm_access"]["roles"])
    assert payload["resource_access"]["jobs-web"]["roles"]
    assert payload["exp"] - payload["iat"] == 300
    assert abs(payload["iat"] - time.time()) < 60


def test_idp_users_and_clients(idp):
    alice = decode_part(idp.token("alice"), 1)
    assert "admin" not in alice["realm_access"]["roles"] and "user" in alice["realm_access"]["roles"]
    other = decode_part(idp.token("alice", client_id="other-app"), 1)
    assert (other["aud"], other["azp"]) == ("account", "other-app")
    assert idp.token_response("alice", password="wrong") == (
        400,
        {"error": "invalid_grant", "error_description": "Invalid user credentials"},
    )
    assert idp.token_response("mallory")[0] == 400
    assert idp.token_response("alice", client_id="no-such-client")[0] == 401


def test_idp_signs_es256_on_request(idp):
    header = decode_part(idp.token("alice", signing_alg="ES256"), 0)
    assert header["alg"] == "ES256"
    assert header["kid"] == idp.keys()["es256_kid"] in published_kids(idp)


def test_tampering_helpers_break_signatures():
    """Self-check of the helpers: with_payload really breaks an RS256 signature."""
    key = SigningKey("RS256")
    token = key.token(claims())
    jwk = key.public_jwk()
    verify_rs256(token, jwk)
    with pytest.raises(InvalidSignature):
        verify_rs256(with_payload(token, preferred_username="admin"), jwk)


# ================================================================ start-up


def test_server_is_ready_once_the_keys_were_fetched(jwt_server, idp):
    """Ready means the IdP's keys are in: /readyz names no issuer, and a fetch already succeeded."""
    status, body = jwt_server.server.admin_get("/readyz")
    assert status == 200, f"/readyz answered {status}"
    text = body.decode() if isinstance(body, bytes) else body
    assert "no keys for issuer" not in text, text
    stats = idp.stats()
    assert stats["discovery"] >= 1 and stats["jwks"] >= 1  # keys found by OIDC discovery (no jwksUri)
    assert metric_value(metrics_text(jwt_server.server), JWKS_FETCHES, issuer=idp.issuer, result="ok") >= 1


# ================================================================ the job board with Keycloak tokens

# (user or None, method, path, allowed)
JOB_BOARD_CASES = {
    "anonymous GET /api/jobs": (None, "GET", "/api/jobs", True),
    "anonymous POST /api/jobs": (None, "POST", "/api/jobs", False),
    "anonymous DELETE /api/jobcategories/7": (None, "DELETE", "/api/jobcategories/7", False),
    "alice GET /api/jobs": ("alice", "GET", "/api/jobs", True),
    "alice POST /api/jobs": ("alice", "POST", "/api/jobs", True),
    "alice DELETE /api/jobs/7": ("alice", "DELETE", "/api/jobs/7", True),
    "alice POST /api/jobcategories": ("alice", "POST", "/api/jobcategories", False),
    "admin POST /api/jobcategories": ("admin", "POST", "/api/jobcategories", True),
    "admin PATCH /api/jobcategories/3": ("admin", "PATCH", "/api/jobcategories/3", True),
    "admin GET /debug/vars (mesh-wide DENY)": ("admin", "GET", "/debug/vars", False),
    "alice PUT /api/jobs (method not allowed)": ("alice", "PUT", "/api/jobs", False),
}


@pytest.mark.parametrize(("user", "method", "path", "allowed"), table(JOB_BOARD_CASES))
def test_job_board_with_keycloak_tokens(jwt_server, idp, user, method, path, allowed):
    outcome = ask(jwt_server.authz, method, path, token=idp.token(user) if user else None)
    if not allowed:
        assert_rbac_denied(outcome)
        return
    assert_allowed(outcome)
    if user:
        assert outcome.headers.get(USER_HEADER) == user, outcome.describe()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_idp_tokens_of_either_algorithm(jwt_server, idp, alg):
    outcome = ask(jwt_server.authz, "POST", "/api/jobcategories", token=idp.token("admin", signing_alg=alg))
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "admin"


def test_token_for_another_audience_where_the_rule_names_none(jwt_server, idp):
    outcome = ask(jwt_server.authz, "POST", "/api/jobs", token=idp.token("alice", client_id="other-app"))
    assert_allowed(outcome)


@pytest.mark.parametrize("key_fixture", ["test_key", "test_es_key"])
def test_inline_jwks_issuer(jwt_server, request, key_fixture):
    key = request.getfixturevalue(key_fixture)
    user = key.token(claims(preferred_username="tester"))
    assert_allowed(outcome := ask(jwt_server.authz, "POST", "/api/jobs", token=user))
    assert outcome.headers.get(USER_HEADER) == "tester"
    assert_rbac_denied(ask(jwt_server.authz, "POST", "/api/jobcategories", token=user))
    admin = key.token(claims(preferred_username="root", realm_access={"roles": ["admin"]}))
    assert_allowed(ask(jwt_server.authz, "POST", "/api/jobcategories", token=admin))


@pytest.mark.parametrize("authorization", ["Basic YWxpY2U6YWxpY2U=", "Token abc.def.ghi", "Bearer"])
def test_authorization_without_a_bearer_token_is_anonymous(jwt_server, authorization):
    """No token is no identity, not an error: the policies then deny the write with 403."""
    assert_rbac_denied(ask(jwt_server.authz, "POST", "/api/jobs", headers={"authorization": authorization}))


# ================================================================ what reaches the service


def test_outputs_of_a_verified_token(jwt_server, idp):
    token = idp.token("alice")
    outcome = ask(jwt_server.authz, "GET", "/api/jobs", token=token)
    assert_allowed(outcome)
    described = outcome.describe()
    assert outcome.headers.get(PAYLOAD_HEADER) == token.split(".")[1], described
    assert outcome.headers.get(USER_HEADER) == "alice", described
    assert outcome.headers.get(VERIFIED_HEADER) == "true", described  # a boolean claim
    assert outcome.headers.get(ISSUED_AT_HEADER) == str(decode_part(token, 1)["iat"]), described  # a number claim
    assert ROLES_HEADER not in outcome.headers, described  # a list claim: no header, as in Envoy
    assert ACCESS_HEADER not in outcome.headers, described  # an object claim: no header
    for name in (PAYLOAD_HEADER, USER_HEADER, VERIFIED_HEADER, ISSUED_AT_HEADER):
        assert outcome.overwrites[name], f"{name} must overwrite what the client sent: {described}"
        assert name not in outcome.headers_to_remove, f"{name} would be removed after being set: {described}"
    assert "authorization" in outcome.headers_to_remove, described
    assert {ROLES_HEADER, ACCESS_HEADER} <= set(outcome.headers_to_remove), described
    assert outcome.query_parameters_to_remove == [], described


def test_anonymous_request_cannot_smuggle_identity_headers(jwt_server):
    outcome = ask(jwt_server.authz, "GET", "/api/jobs", headers={name: "admin" for name in OUTPUT_HEADERS})
    assert_allowed(outcome)
    assert set(OUTPUT_HEADERS) <= set(outcome.headers_to_remove), outcome.describe()
    assert not set(OUTPUT_HEADERS) & set(outcome.headers), outcome.describe()


def test_verified_request_overwrites_smuggled_identity_headers(jwt_server, idp):
    smuggled = {USER_HEADER: "admin", ROLES_HEADER: "admin", PAYLOAD_HEADER: b64url_json({"preferred_username": "admin"})}
    token = idp.token("alice")
    outcome = ask(jwt_server.authz, "POST", "/api/jobs", token=token, headers=smuggled)
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice" and outcome.overwrites[USER_HEADER], outcome.describe()
    assert outcome.headers.get(PAYLOAD_HEADER) == token.split(".")[1] and outcome.overwrites[PAYLOAD_HEADER], outcome.describe()
    assert ROLES_HEADER in outcome.headers_to_remove, outcome.describe()


def test_token_in_the_access_token_query_parameter(jwt_server, idp):
    outcome = ask(jwt_server.authz, "POST", f"/api/jobs?page=2&access_token={idp.token('alice')}")
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice", outcome.describe()
    assert "access_token" in outcome.query_parameters_to_remove, outcome.describe()
    assert "page" not in outcome.query_parameters_to_remove, outcome.describe()


# ================================================================ refused tokens


@dataclass
class Crafting:
    """What the bad-token cases build from: the IdP, its tokens and kid, and the test issuer's key."""

    idp: object
    key: SigningKey
    alice: str
    admin: str
    idp_kid: str


@pytest.fixture
def craft(idp, test_key) -> Crafting:
    alice = idp.token("alice")
    return Crafting(idp, test_key, alice, idp.token("admin"), decode_part(alice, 0)["kid"])


def _swap_header(token: str, **fields) -> str:
    _, payload, signature = token.split(".")
    return f"{b64url_json({**decode_part(token, 0), **fields})}.{payload}.{signature}"


EITHER_ALG_REFUSAL = (VERIFICATION_FAILS, KEY_NOT_FOUND)
# (make token from Crafting, Envoy's message or the messages either of which is right)
BAD_TOKEN_CASES = {
    "expired": (lambda c: c.key.token(claims(iat_offset=-1200, lifetime=600)), EXPIRED),
    "not yet valid (nbf)": (lambda c: c.key.token(claims(nbf=int(time.time()) + 600)), NOT_YET_VALID),
    "issuer not configured": (lambda c: c.key.token(claims(UNCONFIGURED_ISSUER)), UNKNOWN_ISSUER),
    "alice's payload given admin roles": (
        lambda c: with_payload(c.alice, realm_access={"roles": ["user", "admin"]}),
        VERIFICATION_FAILS,
    ),
    "alice's payload renamed admin": (lambda c: with_payload(c.alice, preferred_username="admin"), VERIFICATION_FAILS),
    "admin's signature on alice's token": (lambda c: with_signature_of(c.alice, c.admin), VERIFICATION_FAILS),
    "another key under the IdP's kid": (
        lambda c: SigningKey("RS256", kid=c.idp_kid).token(claims(c.idp.issuer, preferred_username="alice")),
        VERIFICATION_FAILS,
    ),
    "another key under the inline kid": (lambda c: SigningKey("RS256", kid=c.key.kid).token(claims()), VERIFICATION_FAILS),
    "kid the IdP never published": (
        lambda c: SigningKey("RS256", kid="no-such-kid").token(claims(c.idp.issuer)),
        KEY_NOT_FOUND,
    ),
    "kid the inline JWKS lacks": (lambda c: SigningKey("RS256", kid="no-such-kid").token(claims()), KEY_NOT_FOUND),
    # RFC 7519's unsecured JWT ends in an empty signature. Envoy answers "Jwt signature is an invalid
    # Base64url encoded", which is not among the messages portcullis sends: any refusal of the three will do.
    "alg none, empty signature": (
        lambda c: unsigned_token(claims(c.idp.issuer, preferred_username="admin"), kid=c.idp_kid),
        (BAD_FORMAT, *EITHER_ALG_REFUSAL),
    ),
    "alg none with a signature": (
        lambda c: unsigned_token(claims(c.idp.issuer, preferred_username="admin"), kid=c.idp_kid) + "c2lnbmF0dXJl",
        EITHER_ALG_REFUSAL,
    ),
    "alg none with a signature, no kid": (lambda c: unsigned_token(claims(c.idp.issuer)) + "c2lnbmF0dXJl", EITHER_ALG_REFUSAL),
    "HS256 keyed with the IdP's public key": (
        lambda c: hs256_token(public_pem_of(rsa_jwk(c.idp, c.idp_kid)), claims(c.idp.issuer), kid=c.idp_kid),
        EITHER_ALG_REFUSAL,
    ),
    "ES256 header on an RS256 signature": (lambda c: _swap_header(c.alice, alg="ES256"), EITHER_ALG_REFUSAL),
    "no dots": (lambda c: c.alice.replace(".", ""), BAD_FORMAT),
    "one dot": (lambda c: c.alice.rsplit(".", 1)[0], BAD_FORMAT),
    "four sections": (lambda c: f"{c.alice}.{c.alice.split('.')[2]}", BAD_FORMAT),
    "not base64url": (lambda c: "!!!.???.***", (BAD_FORMAT, VERIFICATION_FAILS)),
    "header not JSON": (lambda c: "bm90LWpzb24." + c.alice.split(".", 1)[1], (BAD_FORMAT, VERIFICATION_FAILS)),
}


@pytest.mark.parametrize(("make", "messages"), table(BAD_TOKEN_CASES))
def test_bad_tokens_are_refused_with_envoys_401(jwt_server, craft, make, messages):
    """On GET /api/jobs, which anyone may read: a bad token is an error, not anonymity."""
    outcome = ask(jwt_server.authz, "GET", "/api/jobs", token=make(craft))
    assert_invalid_token(outcome, messages, realm_of("/api/jobs"))


def test_bad_token_on_a_write_is_401_not_403(jwt_server, craft):
    outcome = ask(jwt_server.authz, "POST", "/api/jobcategories/3", token=with_payload(craft.alice, exp=int(time.time()) + 9999))
    assert_invalid_token(outcome, VERIFICATION_FAILS, realm_of("/api/jobcategories/3"))


def test_bad_token_in_the_query_parameter(jwt_server):
    outcome = ask(jwt_server.authz, "GET", "/api/jobs?access_token=not-a-jwt")
    assert_invalid_token(outcome, BAD_FORMAT, None)


@pytest.mark.parametrize(
    "workload",
    [pytest.param(UNPROTECTED, id="other namespace"), pytest.param({"namespace": "job-service", "app": "billing"}, id="other app")],
)
def test_bad_token_where_no_request_authentication_applies(jwt_server, workload):
    """The RequestAuthentication selects app=job-service in job-service: elsewhere a token is not looked at."""
    assert_allowed(ask(jwt_server.authz, "GET", "/api/jobs", token="not-a-jwt", workload=workload))


# ================================================================ rule variants


def test_audiences_restrict_the_rule(audience_server, idp):
    assert_allowed(ask(audience_server.authz, "POST", "/api/jobs", token=idp.token("alice")))  # aud jobs-api, account
    outcome = ask(audience_server.authz, "GET", "/api/jobs", token=idp.token("alice", client_id="other-app"))  # aud account
    assert (outcome.grpc_code, outcome.kind, outcome.http_status, outcome.body) == (
        GRPC_PERMISSION_DENIED,
        "denied_response",
        403,
        AUDIENCE_NOT_ALLOWED,
    ), outcome.describe()
    assert outcome.metadata.get("decision") == "deny", outcome.describe()


def test_forward_original_token_keeps_the_token(forwarding_server, idp):
    token = idp.token("alice")
    outcome = ask(forwarding_server.authz, "POST", "/api/jobs", token=token)
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice", outcome.describe()
    assert "authorization" not in outcome.headers_to_remove, outcome.describe()
    outcome = ask(forwarding_server.authz, "POST", f"/api/jobs?access_token={token}")
    assert_allowed(outcome)
    assert "access_token" not in outcome.query_parameters_to_remove, outcome.describe()


def test_mesh_wide_request_authentication_applies_to_every_workload(forwarding_server, idp):
    """forwarding_server's RequestAuthentication is in istio-system, without a selector."""
    assert_invalid_token(
        ask(forwarding_server.authz, "GET", "/anything", token="not-a-jwt", workload=UNPROTECTED), BAD_FORMAT, realm_of("/anything")
    )
    outcome = ask(forwarding_server.authz, "GET", "/anything", token=idp.token("alice"), workload=UNPROTECTED)
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice", outcome.describe()


def test_from_headers_location(custom_location_server, idp):
    outcome = ask(custom_location_server.authz, "POST", "/api/jobs", headers={"x-token": f"Token {idp.token('alice')}"})
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice", outcome.describe()
    assert "x-token" in outcome.headers_to_remove, outcome.describe()


def test_from_params_location(custom_location_server, idp):
    outcome = ask(custom_location_server.authz, "POST", f"/api/jobs?tok={idp.token('alice')}")
    assert_allowed(outcome)
    assert outcome.headers.get(USER_HEADER) == "alice", outcome.describe()
    assert "tok" in outcome.query_parameters_to_remove, outcome.describe()


# Where the rule does not look: the token is not seen, so the write is anonymous and denied by policy.
UNSEEN_LOCATION_CASES = {
    "authorization bearer": (lambda t: ("/api/jobs", {"authorization": f"Bearer {t}"})),
    "access_token parameter": (lambda t: (f"/api/jobs?access_token={t}", {})),
    "x-token without its prefix": (lambda t: ("/api/jobs", {"x-token": t})),
    "x-token with bearer prefix": (lambda t: ("/api/jobs", {"x-token": f"Bearer {t}"})),
}


@pytest.mark.parametrize("place", table({name: (place,) for name, place in UNSEEN_LOCATION_CASES.items()}))
def test_tokens_outside_the_named_locations_are_not_seen(custom_location_server, idp, place):
    path, headers = place(idp.token("alice"))
    assert_rbac_denied(ask(custom_location_server.authz, "POST", path, headers=headers))


def test_bad_token_in_a_named_header(custom_location_server):
    outcome = ask(custom_location_server.authz, "GET", "/api/jobs", headers={"x-token": "Token not-a-jwt"})
    assert_invalid_token(outcome, BAD_FORMAT, realm_of("/api/jobs"))


# ================================================================ metrics


def test_metrics_count_token_cache_hits(jwt_server, idp):
    token = idp.token("alice")
    assert_allowed(ask(jwt_server.authz, "POST", "/api/jobs", token=token))
    hits = metric_value(metrics_text(jwt_server.server), CACHE_HITS)
    assert_allowed(ask(jwt_server.authz, "POST", "/api/jobs", token=token))
    assert metric_value(metrics_text(jwt_server.server), CACHE_HITS) >= hits + 1


def test_metrics_count_invalid_tokens(jwt_server, craft):
    labels = {"door": "grpc", "decision": "deny", "reason": "invalid_token"}
    before = metric_value(metrics_text(jwt_server.server), CHECKS, **labels)
    bad = [craft.key.token(claims(iat_offset=-1200, lifetime=600)), with_signature_of(craft.alice, craft.admin), "not-a-jwt"]
    for token in bad:
        assert ask(jwt_server.authz, "GET", "/api/jobs", token=token).http_status == 401
    assert metric_value(metrics_text(jwt_server.server), CHECKS, **labels) == before + len(bad)


# ================================================================ key rotation (an IdP of its own)


def wait_out_refetch_limit(idp) -> None:
    """Sleep until SERVER_REFETCH_LIMIT_S passed since the server last fetched the IdP's JWKS.

    Unknown-kid refetches are limited to one per SERVER_REFETCH_LIMIT_S per issuer; a test that
    follows another test's refetch waits that limit out (measured, conservatively, from any fetch).
    """
    last = idp.stats()["last_jwks_ms"]
    assert last is not None, "the server never fetched the IdP's JWKS"
    remaining = last / 1000 + SERVER_REFETCH_LIMIT_S + 0.5 - time.time()
    if remaining > 0:
        time.sleep(remaining)


def test_rotated_key_is_accepted_within_seconds(rotation_server):
    authz, idp = rotation_server.authz, rotation_server.idp
    old = idp.token("alice")
    old_unchecked = idp.token("admin")
    assert_allowed(ask(authz, "POST", "/api/jobs", token=old))
    # No wait: the first unknown kid is refetched at once, even right after the start-up fetch.
    fetches = idp.stats()["jwks"]

    rotated = idp.rotate()
    new = idp.token("alice")
    assert decode_part(new, 0)["kid"] == rotated["kid"] != decode_part(old, 0)["kid"]
    outcome, took = wait_allowed(authz, "POST", "/api/jobs", new, ROTATION_DEADLINE_S)
    assert outcome.allowed, f"token under the new kid refused for {took:.1f}s: {outcome.describe()}"
    assert idp.stats()["jwks"] > fetches, "the server never asked the IdP for its new keys"

    # The old key is still published, so a token signed before the rotation still verifies.
    assert_allowed(ask(authz, "POST", "/api/jobcategories", token=old_unchecked))


def test_rotation_that_drops_the_old_key(rotation_server):
    authz, idp = rotation_server.authz, rotation_server.idp
    wait_out_refetch_limit(idp)
    rotated = idp.rotate(drop_old=True)
    assert published_kids(idp) == [rotated["kid"], rotated["es256_kid"]]
    outcome, took = wait_allowed(authz, "POST", "/api/jobcategories", idp.token("admin"), ROTATION_DEADLINE_S)
    assert outcome.allowed, f"token under the new kid refused for {took:.1f}s: {outcome.describe()}"


def test_unknown_kids_do_not_hammer_the_idp(rotation_server):
    """Twenty tokens naming kids nobody published cost the IdP at most a couple of JWKS fetches."""
    authz, idp = rotation_server.authz, rotation_server.idp
    fetches = idp.stats()["jwks"]
    key = SigningKey("RS256")
    for n in range(20):
        token = key.token(claims(idp.issuer), kid=f"made-up-{n}")
        assert_invalid_token(ask(authz, "GET", "/api/jobs", token=token), KEY_NOT_FOUND, realm_of("/api/jobs"))
    assert idp.stats()["jwks"] - fetches <= 2


def test_a_failed_refetch_keeps_the_keys(rotation_server):
    """The JWKS endpoint fails (500) right when a rotation happens: known keys keep working, and the new
    kid is accepted once the endpoint recovers."""
    authz, idp = rotation_server.authz, rotation_server.idp
    wait_out_refetch_limit(idp)
    unseen = idp.token("admin")
    idp.set_jwks_status(500)
    try:
        rotated = idp.rotate()
        new = idp.token("alice")
        assert decode_part(new, 0)["kid"] == rotated["kid"]
        assert_invalid_token(ask(authz, "POST", "/api/jobs", token=new), (KEY_NOT_FOUND, JWKS_FETCH_FAILED), realm_of("/api/jobs"))
        assert_allowed(ask(authz, "POST", "/api/jobcategories", token=unseen))
    finally:
        idp.set_jwks_status(200)
    wait_out_refetch_limit(idp)
    outcome, took = wait_allowed(authz, "POST", "/api/jobs", new, ROTATION_DEADLINE_S)
    assert outcome.allowed, f"token under the new kid refused for {took:.1f}s after the IdP recovered: {outcome.describe()}"


# ================================================================ the IdP dies after start-up (an IdP of its own)


def test_keys_outlive_the_idp(orphaned_server):
    authz, idp = orphaned_server.authz, orphaned_server.idp
    checked, unseen, spare = idp.token("alice"), idp.token("admin"), idp.token("alice")
    assert_allowed(ask(authz, "POST", "/api/jobs", token=checked))

    idp.kill()
    assert_allowed(ask(authz, "POST", "/api/jobs", token=checked))
    assert_allowed(ask(authz, "POST", "/api/jobcategories", token=unseen))  # verified with the keys fetched at start

    # An unknown kid makes the server try the dead IdP; that failure must not cost it the keys it has.
    stranger = SigningKey("RS256", kid="after-the-idp-died").token(claims(idp.issuer))
    assert_invalid_token(ask(authz, "GET", "/api/jobs", token=stranger), (KEY_NOT_FOUND, JWKS_FETCH_FAILED), realm_of("/api/jobs"))
    assert_allowed(ask(authz, "POST", "/api/jobs", token=spare))
    assert orphaned_server.server.is_ready()


# ================================================================ the IdP never answers


def test_readiness_names_an_issuer_whose_idp_is_down(idp_down_server, unreachable_issuer):
    """A down IdP does not hold the gate: /readyz is 503 until the first fetch failed, then 200 naming the issuer."""
    server = idp_down_server.server
    deadline = time.monotonic() + READINESS_BOUND_S + 5  # a hang guard, not a measurement
    answers = []
    while not answers or answers[-1][0] != 200:
        assert time.monotonic() < deadline, f"/readyz never answered 200: {answers[-3:]}"
        if answers:
            time.sleep(0.2)
        answers.append(server.admin_get("/readyz"))
    assert {status for status, _ in answers} <= {503, 200}, f"/readyz answered {sorted({status for status, _ in answers})}"
    # Ready only after the first fetch of the down issuer's keys ended, however fast that was.
    failed = metric_value(metrics_text(server), JWKS_FETCHES, issuer=unreachable_issuer, result="error")
    assert failed >= 1, "ready before the first fetch of the down issuer's keys failed"
    body = answers[-1][1]
    text = body.decode() if isinstance(body, bytes) else body
    assert f"no keys for issuer {unreachable_issuer}" in text, text


def test_token_of_an_unreachable_issuer(idp_down_server, unreachable_issuer):
    token = SigningKey("RS256").token(claims(unreachable_issuer))
    assert_invalid_token(ask(idp_down_server.authz, "GET", "/api/jobs", token=token), JWKS_FETCH_FAILED, realm_of("/api/jobs"))
    assert metric_value(metrics_text(idp_down_server.server), JWKS_FETCHES, issuer=unreachable_issuer, result="ok") == 0


def test_inline_issuer_works_while_the_remote_one_is_down(idp_down_server, test_key):
    assert_allowed(ask(idp_down_server.authz, "POST", "/api/jobs", token=test_key.token(claims())))
