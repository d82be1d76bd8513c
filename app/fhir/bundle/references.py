"""Reference rewriting inside a Bundle: `urn:uuid:`/`urn:oid:` fullUrls, absolute fullUrls of
POSTed entries (and their `Type/id` form), and conditional references `Type?criteria`.

Every `reference` string anywhere in a resource is visited, so references inside extensions,
contained resources and backbone elements are covered; narrative links to a placeholder
(`href="urn:uuid:…"`) are rewritten too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

JsonDict = dict[str, Any]

CONDITIONAL = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$", re.DOTALL)
PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")


def is_placeholder(reference: str) -> bool:
    return reference.startswith(PLACEHOLDER_PREFIXES)


def conditional_parts(reference: str) -> tuple[str, list[tuple[str, str]]] | None:
    match = CONDITIONAL.match(reference)
    if match is None:
        return None
    return match.group(1), parse_qsl(match.group(2), keep_blank_values=True)


def iter_references(node: Any) -> Iterator[str]:
    """Every Reference.reference string in `node` (a resource or any part of one)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key == "reference" and isinstance(value, str):
                    yield value
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(current, list):
            stack.extend(v for v in current if isinstance(v, dict | list))


def rewrite(node: Any, replace: Callable[[str], str | None]) -> Any:
    """A copy of `node` with each reference `r` replaced by `replace(r)` when not None.

    Unchanged subtrees are shared, not copied: most of a resource holds no references.
    """
    if isinstance(node, dict):
        out: JsonDict | None = None
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                new: Any = replace(value)
                new = value if new is None else new
            elif key == "div" and isinstance(value, str) and "urn:" in value:
                new = _rewrite_narrative(value, replace)
            elif isinstance(value, dict | list):
                new = rewrite(value, replace)
            else:
                continue
            if new is not value:
                if out is None:
                    out = dict(node)
                out[key] = new
        return node if out is None else out
    if isinstance(node, list):
        items = [rewrite(v, replace) if isinstance(v, dict | list) else v for v in node]
        if any(a is not b for a, b in zip(items, node, strict=True)):
            return items
        return node
    return node


_NARRATIVE_LINK = re.compile(r'(?P<q>["\'])(?P<url>urn:(?:uuid|oid):[^"\']+)(?P=q)')


def _rewrite_narrative(div: str, replace: Callable[[str], str | None]) -> str:
    def sub(match: re.Match[str]) -> str:
        target = replace(match.group("url"))
        return match.group(0) if target is None else f"{match.group('q')}{target}{match.group('q')}"

    new = _NARRATIVE_LINK.sub(sub, div)
    return div if new == div else new
