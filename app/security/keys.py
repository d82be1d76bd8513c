"""The server's signing keys, and the JOSE helpers shared by token and assertion checks.

A `KeyRing` holds the current signing key and a few previous ones. Tokens are always
signed with the current key; any key in the ring verifies. Rotating makes a new current key
and keeps the old one, so tokens signed before the rotation stay valid until they expire.
Keep at least as many previous keys as rotations can happen within the longest token
lifetime.

The ring persists as JSON (`save`/`load_or_create`) in a file readable only by its owner,
so tokens survive restarts. `to_dict`/`from_dict` let a caller keep it elsewhere (e.g. the
database, to share one ring between several app instances).

Every key's `kid` is its RFC 7638 thumbprint: unique and stable across restarts.

The server keeps two rings: one for access tokens (RS384 or ES384, the algorithms SMART
Backend Services names) and one for OpenID Connect id tokens (RS256, which OpenID Connect
Core §15.1 makes mandatory and most relying parties expect). Separate keys, so a key is only
ever used with one algorithm and an id token can never verify as an access token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from joserfc.jwk import ECKey, RSAKey, import_key

log = logging.getLogger(__name__)

SigningAlgorithm = Literal["RS256", "RS384", "ES384"]
AsymmetricKey = RSAKey | ECKey

DEFAULT_ALGORITHM: SigningAlgorithm = "RS384"
ID_TOKEN_ALGORITHM: SigningAlgorithm = "RS256"  # noqa: S105  # a JWS alg, not a secret
RSA_KEY_SIZE = 2048
MIN_CLIENT_RSA_BITS = 2048
_FILE_FORMAT = 1

# Which key type each supported JWS algorithm needs (RFC 7518 §3.1).
_KEY_TYPE_FOR_ALG: dict[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: SigningAlgorithm
    created: int  # epoch seconds
    key: AsymmetricKey  # private

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


def generate_key(
    alg: SigningAlgorithm = DEFAULT_ALGORITHM, *, now: int | None = None
) -> SigningKey:
    """A new private key for `alg`: RSA 2048 for RS256 and RS384, P-384 for ES384."""
    key: AsymmetricKey
    if alg in ("RS256", "RS384"):
        key = RSAKey.generate_key(RSA_KEY_SIZE)
    elif alg == "ES384":
        key = ECKey.generate_key("P-384")
    else:
        raise ValueError(f"unsupported signing algorithm {alg!r}")
    kid = key.thumbprint()
    key.ensure_kid()  # the key's own kid follows its thumbprint too
    return SigningKey(kid=kid, alg=alg, created=int(time.time()) if now is None else now, key=key)


class KeyRing:
    """The current signing key plus previous keys kept for verification."""

    def __init__(self, current: SigningKey, previous: list[SigningKey] | None = None) -> None:
        self._current = current
        self._previous = list(previous or [])

    # -- creation and persistence ---------------------------------------------------------

    @classmethod
    def generate(cls, alg: SigningAlgorithm = DEFAULT_ALGORITHM) -> KeyRing:
        return cls(generate_key(alg))

    @classmethod
    def load_or_create(
        cls, path: str | os.PathLike[str], alg: SigningAlgorithm = DEFAULT_ALGORITHM
    ) -> KeyRing:
        """Load the ring from `path`, or create one with a fresh key and save it there."""
        file = Path(path)
        if file.exists():
            return cls.load(file)
        ring = cls.generate(alg)
        try:
            ring.save(file, overwrite=False)
        except FileExistsError:
            # Another process created the ring first: use its keys, not ours, so that
            # every process signs and verifies with the same ring.
            return cls.load(file)
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        file = Path(path)
        mode = file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            # Not fatal (an operator may have reasons), but private keys readable by others
            # let anyone on the host forge tokens: say so loudly.
            log.warning("signing key file %s is accessible to group/others (mode %o)", file, mode)
        return cls.from_dict(json.loads(file.read_text(encoding="utf-8")))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write the ring atomically to `path` with mode 0600.

        With `overwrite=False`, raise FileExistsError instead of replacing an existing file.
        """
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600 from the start, so the keys are never exposed, and
        # the rename (or link) makes the write atomic: a crash leaves the old ring or the new.
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.to_dict(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            if overwrite:
                os.replace(tmp, file)
            else:
                os.link(tmp, file)  # fails if the file exists, unlike a rename
        finally:
            Path(tmp).unlink(missing_ok=True)

    def to_dict(self) -> dict[str, Any]:
        """The ring including private keys: store it only where secrets belong."""
        return {
            "format": _FILE_FORMAT,
            "current": self._current.kid,
            "keys": [
                {
                    "kid": k.kid,
                    "alg": k.alg,
                    "created": k.created,
                    "jwk": k.key.as_dict(private=True),
                }
                for k in self.keys
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyRing:
        if data.get("format") != _FILE_FORMAT:
            raise ValueError(f"unsupported key ring format {data.get('format')!r}")
        keys: list[SigningKey] = []
        for entry in data["keys"]:
            key = import_key(entry["jwk"])
            if not isinstance(key, RSAKey | ECKey) or not key.is_private:
                raise ValueError(f"key {entry['kid']!r} is not an asymmetric private key")
            keys.append(
                SigningKey(kid=entry["kid"], alg=entry["alg"], created=entry["created"], key=key)
            )
        current = [k for k in keys if k.kid == data["current"]]
        if len(current) != 1:
            raise ValueError("key ring has no current key")
        return cls(current[0], [k for k in keys if k.kid != data["current"]])

    # -- use ------------------------------------------------------------------------------

    @property
    def current(self) -> SigningKey:
        return self._current

    @property
    def keys(self) -> list[SigningKey]:
        """Current key first, then previous keys, newest first."""
        return [self._current, *self._previous]

    def find(self, kid: str) -> SigningKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def rotate(self, alg: SigningAlgorithm | None = None, *, keep_previous: int = 2) -> SigningKey:
        """Make a new current key; keep the `keep_previous` most recent old keys.

        The caller saves the ring afterwards.
        """
        new = generate_key(alg or self._current.alg)
        self._previous = [self._current, *self._previous][: max(keep_previous, 0)]
        self._current = new
        return new

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set served at `jwks_uri`: every key that may still verify a token."""
        return {"keys": [k.public_jwk() for k in self.keys]}


# -- shared JOSE helpers --------------------------------------------------------------------


class MalformedJWT(ValueError):
    """The text is not a compact JWS with a JSON-object header and payload."""


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, claims) of a compact JWS, WITHOUT checking the signature.

    Only for choosing a key or finding the client before verification; never trust them.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedJWT("a JWT has three dot-separated parts")
    header = _b64_json(parts[0], "header")
    claims = _b64_json(parts[1], "payload")
    return header, claims


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise MalformedJWT(f"the JWT {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise MalformedJWT(f"the JWT {what} is not a JSON object")
    return value


def _rsa_bits(key: RSAKey) -> int:
    return int(getattr(key.raw_value, "key_size", 0))


def key_type_for(alg: str) -> str | None:
    return _KEY_TYPE_FOR_ALG.get(alg)


def candidate_keys(jwks: Mapping[str, Any], kid: str | None, alg: str) -> list[AsymmetricKey]:
    """Keys of a JWK Set that may verify a JWS with header `kid` and `alg`.

    Follows the SMART rule: filter by `kid` and by a `kty` consistent with `alg`; the caller
    requires exactly one match. Keys that do not import (bad or symmetric) are skipped, so
    one broken entry in a client's JWKS does not lock it out.
    """
    kty = key_type_for(alg)
    found: list[AsymmetricKey] = []
    for entry in jwks.get("keys", []):
        if not isinstance(entry, Mapping) or entry.get("kty") != kty:
            continue
        if kid is not None and entry.get("kid") != kid:
            continue
        if entry.get("alg") not in (None, alg) or entry.get("use") not in (None, "sig"):
            continue
        try:
            key = import_key(dict(entry))
        except Exception:  # noqa: S112  # a malformed third-party key is just not a candidate
            continue
        if isinstance(key, RSAKey) and _rsa_bits(key) < MIN_CLIENT_RSA_BITS:
            continue  # factorable today: a signature by it proves nothing
        if isinstance(key, RSAKey | ECKey):
            found.append(key)
    return found
