"""Credentials for tests of the authenticated server: API keys for each role, a signing key,
an identity provider's HS256 secret, and minting of JWTs (study tokens and external ones)."""

import base64
import hashlib
import hmac
import json
import time

SIGNING_KEY = "test-signing-key-0123456789"
IDP_SECRET = "test-idp-shared-secret"
KEYS = {"viewer": "pl_test_viewer_key", "uploader": "pl_test_uploader_key", "admin": "pl_test_admin_key"}


def env(**extra) -> dict:
    keys = ",".join(
        f'{{name="{role}-key",role="{role}",sha256="{hashlib.sha256(k.encode()).hexdigest()}"}}'
        for role, k in KEYS.items())
    out = {
        "PACS_AUTH__API_KEYS": f"[{keys}]",
        "PACS_AUTH__SIGNING_KEYS": f'["{SIGNING_KEY}"]',
        "PACS_AUTH__JWT__HS256_SECRET": IDP_SECRET,
        "PACS_AUTH__JWT__ISSUER": "test-idp",
        "PACS_AUTH__JWT__AUDIENCE": "pacs-lite",
    }
    out.update(extra)
    return out


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict, secret: str, kid: str | None = None) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def signing_kid() -> str:
    return hashlib.sha256(SIGNING_KEY.encode()).hexdigest()[:16]


def study_token(study_uid: str, exp_in=3600) -> str:
    now = int(time.time())
    return jwt({"iss": "pacs-lite", "sub": "test", "role": "viewer", "study": study_uid, "iat": now,
                "exp": now + exp_in}, SIGNING_KEY, kid=signing_kid())


def idp_token(role, exp_in=3600, **extra) -> str:
    now = int(time.time())
    claims = {"iss": "test-idp", "aud": "pacs-lite", "sub": "dr-who", "role": role, "iat": now, "exp": now + exp_in}
    claims.update(extra)
    return jwt(claims, IDP_SECRET)


def tamper(token: str) -> str:
    """Change the payload (the signature no longer matches)."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["study"] = "1.2.3.4.5.6.7.8.9"
    claims["role"] = "admin"
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}
