"""PKCE (RFC 7636) for the authorization code flow, S256 only.

SMART App Launch 2.x requires PKCE with `S256` and forbids `plain`, which would let anyone
who sees the authorization request redeem the code. Two checks happen at two endpoints:

* at `/authorize`: `check_challenge(code_challenge, code_challenge_method)`;
* at `/token`: `verify(code_verifier, stored_challenge, stored_method)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from app.security.errors import OAuthError

SUPPORTED_METHODS = ("S256",)

# RFC 7636 §4.1: code-verifier = 43*128unreserved
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# An S256 challenge is BASE64URL(SHA-256(...)) without padding: always 43 characters.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def s256_challenge(code_verifier: str) -> str:
    """BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_challenge(code_challenge: str | None, method: str | None) -> None:
    """Validate the challenge of an authorization request; raise `invalid_request` if bad."""
    if not code_challenge:
        raise OAuthError(
            "invalid_request", "code_challenge is required (PKCE)", reason="pkce_missing"
        )
    # RFC 7636 §4.3 defaults a missing method to "plain", which SMART forbids.
    if method not in SUPPORTED_METHODS:
        raise OAuthError(
            "invalid_request",
            f"code_challenge_method must be S256, got {method or 'none (plain)'!r}",
            reason="pkce_method",
        )
    if not _S256_CHALLENGE.fullmatch(code_challenge):
        raise OAuthError(
            "invalid_request",
            "code_challenge is not a base64url SHA-256 digest (43 characters)",
            reason="pkce_challenge_syntax",
        )


def verify(code_verifier: str | None, code_challenge: str, method: str) -> None:
    """Check the token request's verifier against the challenge stored with the code.

    Raises `OAuthError("invalid_grant")` on a mismatch (RFC 7636 §4.6) and
    `OAuthError("invalid_request")` if the verifier is missing or malformed.
    """
    if method not in SUPPORTED_METHODS:
        raise OAuthError(
            "invalid_grant",
            f"code_challenge_method {method!r} is not supported",
            reason="pkce_method",
        )
    if not code_verifier:
        raise OAuthError(
            "invalid_request", "code_verifier is required (PKCE)", reason="pkce_missing"
        )
    if not _VERIFIER.fullmatch(code_verifier):
        raise OAuthError(
            "invalid_request",
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~] (RFC 7636 §4.1)",
            reason="pkce_verifier_syntax",
        )
    # Constant-time: the comparison must not leak how much of a guess was right.
    expected = s256_challenge(code_verifier).encode()
    if not hmac.compare_digest(expected, code_challenge.encode()):
        raise OAuthError(
            "invalid_grant", "code_verifier does not match code_challenge", reason="pkce_mismatch"
        )
