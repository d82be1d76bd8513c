"""How a resource body is stored: as its JSON text, in the `resource` field.

Why text and not a nested document: the database never queries inside a body (every search
runs on the `s` keys, DESIGN.md), so a nested document only costs. The embedded server decodes
and deep-copies every field of every document it returns, and a FHIR body is hundreds of small
fields; a string is one. Side by side on the 101,000-resource benchmark store, a page of 50
Observations cost the database 10.4–11.2 ms of CPU with text bodies against 13.4–14.2 ms with
nested ones, and the app 1.8 ms against 2.5–4.7 ms to decode them (orjson against BSON).
Medplum (a JSON text column) and HAPI (a text blob beside its index tables) store bodies the
same way. It stays readable in `mongosh`.

Documents written before this change hold a nested document; `load_body` reads both, so a
store never needs converting (an update rewrites a resource in the new form). An older server
version cannot read text bodies: stop older instances before starting this one (README).
"""

from __future__ import annotations

from typing import Any

import orjson

Doc = dict[str, Any]
FIELD = "resource"


def stored_body(resource: Doc) -> str:
    return orjson.dumps(resource).decode()


def load_body(value: str | Doc) -> Doc:
    """The body as a dict, from either stored form."""
    if isinstance(value, str):
        body: Doc = orjson.loads(value)
        return body
    return value


def loaded(doc: Doc) -> Doc:
    """`doc` (a current or history document) with its body as a dict, converted in place."""
    value = doc.get(FIELD)
    if isinstance(value, str):
        doc[FIELD] = orjson.loads(value)
    return doc
