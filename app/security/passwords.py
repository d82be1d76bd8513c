"""Password hashing for the local user store: scrypt (RFC 7914) from the standard library.

Stored form: `scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`, so the cost can be raised later
without invalidating existing hashes (each hash carries its own parameters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# About 16 MiB and a few tens of ms per check: costly for an offline attacker, cheap enough
# for a login form. OWASP's scrypt minimum is N=2^17 with r=8 only for p=1 at 128 MiB; this
# is a deliberate trade-off for a 2-core dev box, raise N for production deployments.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_HASH_BYTES = 32


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(digest))


def dummy_verify(password: str) -> None:
    """Spend the time of a real check, so a login for an unknown user takes as long."""
    _scrypt(password, b"0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_HASH_BYTES, maxmem=64 * 2**20
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
