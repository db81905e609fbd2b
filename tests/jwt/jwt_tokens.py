"""JWTs built by the test itself: its own keys (RS256, ES256), HS256, alg none, and tampered IdP tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# The second issuer of the test policies: its keys are inline (`jwks` in the RequestAuthentication).
TEST_ISSUER = "https://test-issuer.example"
UNCONFIGURED_ISSUER = "https://evil.example/realms/jobs"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def _uint(number: int, size: int) -> str:
    return b64url(number.to_bytes(size, "big"))


def decode_part(token: str, index: int) -> dict:
    """The token's header (0) or payload (1), decoded."""
    return json.loads(b64url_decode(token.split(".")[index]))


class SigningKey:
    """A key pair the test owns: signs tokens and describes itself as a public JWK."""

    def __init__(self, alg: str = "RS256", kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"test-{alg.lower()}-{secrets.token_hex(6)}"
        if alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(alg)

    def public_jwk(self) -> dict:
        numbers = self.private.public_key().public_numbers()
        if self.alg == "RS256":
            size = (numbers.n.bit_length() + 7) // 8
            return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig", "n": _uint(numbers.n, size), "e": _uint(numbers.e, 3)}
        return {
            "kty": "EC",
            "kid": self.kid,
            "alg": "ES256",
            "use": "sig",
            "crv": "P-256",
            "x": _uint(numbers.x, 32),
            "y": _uint(numbers.y, 32),
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_input(self, signing_input: bytes) -> bytes:
        if self.alg == "RS256":
            return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def token(self, claims: dict, **header) -> str:
        """A signed JWT; header fields override {alg, typ, kid}."""
        head = {"alg": self.alg, "typ": "JWT", "kid": self.kid, **header}
        signing_input = f"{b64url_json(head)}.{b64url_json(claims)}"
        return f"{signing_input}.{b64url(self.sign_input(signing_input.encode()))}"


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [key.public_jwk() for key in keys]}


def claims(issuer: str = TEST_ISSUER, *, lifetime: int = 300, iat_offset: int = 0, **extra) -> dict:
    """Keycloak-shaped claims, valid now for `lifetime` seconds unless overridden."""
    now = int(time.time()) + iat_offset
    base = {
        "iss": issuer,
        "sub": "5a1f0c2e-0000-4000-8000-00000000beef",
        "aud": ["jobs-api", "account"],
        "azp": "jobs-web",
        "typ": "Bearer",
        "iat": now,
        "exp": now + lifetime,
        "scope": "openid profile email",
        "preferred_username": "tester",
        "realm_access": {"roles": ["user"]},
        "resource_access": {"jobs-web": {"roles": ["viewer"]}},
    }
    base.update(extra)
    return base


def hs256_token(secret: bytes, payload: dict, **header) -> str:
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = f"{b64url_json(head)}.{b64url_json(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned_token(payload: dict, **header) -> str:
    """alg none, with the empty signature RFC 7519 prescribes (still two dots)."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT', **header})}.{b64url_json(payload)}."


def with_payload(token: str, **changes) -> str:
    """The token with claims changed in its payload and its original signature kept."""
    header, payload, signature = token.split(".")
    claims_ = json.loads(b64url_decode(payload))
    claims_.update(changes)
    return f"{header}.{b64url_json(claims_)}.{signature}"


def with_signature_of(token: str, other: str) -> str:
    """The token carrying another token's signature."""
    header, payload, _ = token.split(".")
    return f"{header}.{payload}.{other.split('.')[2]}"


def rsa_public_key(jwk: dict) -> rsa.RSAPublicKey:
    n, e = (int.from_bytes(b64url_decode(jwk[part]), "big") for part in ("n", "e"))
    return rsa.RSAPublicNumbers(e, n).public_key()


def public_pem_of(jwk: dict) -> bytes:
    """An RSA JWK's public key in PEM: the secret of the classic RS256 -> HS256 confusion attack."""
    return rsa_public_key(jwk).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_rs256(token: str, jwk: dict) -> None:
    """Raises cryptography's InvalidSignature unless jwk's key signed the token (RS256)."""
    header, payload, signature = token.split(".")
    rsa_public_key(jwk).verify(b64url_decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
