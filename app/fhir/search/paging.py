"""Keyset paging cursors for search results.

A cursor names the position of the last (or first) entry of a page by its sort key, so a page
link stays correct while resources are created or deleted: nothing shifts the way an offset
would. Cursors are signed (HMAC-SHA256) and bound to the query they were issued for, so a
tampered cursor, or one pasted onto another search, is a 400 rather than a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from app.fhir.outcome import BadRequest

CURSOR_PARAM = "_cursor"
_VERSION = 1
_SIGNATURE_BYTES = 16
# Sort key values are plain JSON scalars; anything else in a decoded cursor is tampering.
_SCALARS = (str, int, float, type(None))


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: strictly after (`forward`) or before `key` in the result order.

    `key` holds one value per sort field (None for a missing value) and the resource type last
    but one and the id last, so it is a total order even across types. `total` carries the
    count computed on the first page (see execute.py, `_total`).
    """

    forward: bool
    key: tuple[Any, ...]
    total: int | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CursorCodec:
    """Signs and checks cursors with one secret (share it between instances behind a balancer)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(self, cursor: Cursor, query_id: str) -> str:
        payload = orjson.dumps(
            [_VERSION, query_id, 1 if cursor.forward else 0, list(cursor.key), cursor.total]
        )
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def decode(self, text: str, query_id: str, key_length: int) -> Cursor:
        invalid = BadRequest(
            "The paging cursor is not valid for this search (it was altered, belongs to another "
            "search, or was issued by a server with a different secret)",
            expression=[CURSOR_PARAM],
        )
        body, _, signature = text.partition(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                raise invalid
            version, issued_for, forward, key, total = orjson.loads(payload)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            raise invalid from None
        if version != _VERSION or issued_for != query_id or not isinstance(key, list):
            raise invalid
        if len(key) != key_length or not all(
            isinstance(v, _SCALARS) and not isinstance(v, bool) for v in key
        ):
            raise invalid
        if total is not None and (not isinstance(total, int) or isinstance(total, bool)):
            raise invalid
        return Cursor(bool(forward), tuple(key), total)


def query_id(parts: list[Any]) -> str:
    """A short fingerprint of everything that defines a result set (not the page position)."""
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]
