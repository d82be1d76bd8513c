"""Compile the FHIRPath subset used by the official R4 SearchParameters into fast extractors.

A general FHIRPath interpreter costs milliseconds per resource; the write path cannot afford
that. The 1,375 official expressions use only these shapes (surveyed from the R4 bundle):

    A.b.c                             path navigation (choice elements `value[x]` included)
    p1 | p2 | ...                     unions
    (A.b as T)  /  A.b.as(T)          choice type selection, optionally followed by `.c`
    A.b.where(resolve() is T)         references whose target type is T
    A.b.where(system='x') / where(type='x')    equality on a child element
    A.entry[0].resource               indexing
    A.b.exists() and A.b != false     Patient.deceased only

Each union branch becomes a list of step functions over node lists. Anything outside the subset
raises `UnsupportedExpression` at compile time, so a gap is found when the registry loads, not
when a resource is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

Node = Any
Step = Callable[[list[Node]], list[Node]]

_DEFINITIONS = Path(__file__).resolve().parent.parent / "definitions"


class UnsupportedExpression(ValueError):
    """An expression outside the FHIRPath subset this module compiles."""


@cache
def choice_elements() -> dict[str, tuple[str, ...]]:
    """Choice element name → the type suffixes its JSON keys can carry (`value` → Quantity…)."""
    raw = json.loads((_DEFINITIONS / "choice_elements.json").read_text("utf-8"))
    return {name: tuple(t[0].upper() + t[1:] for t in types) for name, types in raw.items()}


def _walk(keys: list[tuple[str, tuple[str, ...]]]) -> Step:
    """One step for a run of member accesses `.a.b.c` (fused: the write path runs it a lot).

    Each key carries the type suffixes it takes when it names a choice element, so `.value`
    finds `valueQuantity`, `valueString`…
    """
    path = tuple(keys)

    def step(nodes: list[Node]) -> list[Node]:
        for name, choices in path:
            out: list[Node] = []
            for node in nodes:
                if type(node) is not dict:
                    continue
                value = node.get(name)
                if value is None:
                    if not choices:
                        continue
                    for suffix in choices:
                        value = node.get(name + suffix)
                        if value is not None:
                            break
                    else:
                        continue
                if type(value) is list:
                    # JSON arrays may hold nulls to align primitive extensions; they are no values.
                    out.extend(v for v in value if v is not None)
                else:
                    out.append(value)
            if not out:
                return out
            nodes = out
        return nodes

    return step


def reference_type(reference: str) -> str | None:
    """The resource type a literal reference points to (`Patient/1`, `http://x/Patient/1`)."""
    if not reference or reference.startswith("#") or reference.startswith("urn:"):
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2]
    return None


def _where_resolve_is(type_name: str) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        out: list[Node] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            ref = node.get("reference")
            target = reference_type(ref) if isinstance(ref, str) else None
            if target == type_name or (target is None and node.get("type") == type_name):
                out.append(node)
        return out

    return step


def _where_equals(field: str, literal: str) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [n for n in nodes if isinstance(n, dict) and n.get(field) == literal]

    return step


def _index(position: int) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        return nodes[position : position + 1]

    return step


_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_STEP = re.compile(
    rf"""\.(?:
        where\(resolve\(\)\s+is\s+(?P<resolve>{_NAME})\)
      | where\((?P<field>{_NAME})\s*=\s*'(?P<literal>[^']*)'\)
      | as\((?P<as_fn>{_NAME})\)
      | ofType\((?P<of_type>{_NAME})\)
      | (?P<name>{_NAME})(?:\[(?P<index>\d+)\])?
    )""",
    re.VERBOSE,
)
_AS_OPERATOR = re.compile(rf"^\((?P<path>[^()]+?)\s+as\s+(?P<type>{_NAME})\)(?P<rest>.*)$")
_DECEASED = re.compile(rf"^(?P<path>{_NAME}\.{_NAME})\.exists\(\) and (?P=path) != false$")


def split_union(expression: str) -> list[str]:
    """Top-level `|` branches (a `|` inside parentheses or quotes does not split)."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def _compile_steps(path: str) -> list[Step]:
    """Steps for `.a.b.where(...)...` (the text after the root type name, leading dot included)."""
    # Member accesses are collected as keys and fused into one `_walk` step per run.
    ops: list[tuple[str, str, tuple[str, ...]] | Step] = []
    pos = 0
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise UnsupportedExpression(f"cannot compile '{path[pos:]}'")
        pos = match.end()
        groups = match.groupdict()
        if groups["resolve"]:
            ops.append(_where_resolve_is(groups["resolve"]))
        elif groups["field"]:
            ops.append(_where_equals(groups["field"], groups["literal"]))
        elif groups["as_fn"] or groups["of_type"]:
            type_name = groups["as_fn"] or groups["of_type"]
            last = ops[-1] if ops else None
            if not isinstance(last, tuple) or not last[2]:
                raise UnsupportedExpression(f"'as {type_name}' on a non-choice element in {path}")
            # A choice element typed by `as`: exactly one JSON key, e.g. valueQuantity.
            ops[-1] = ("key", last[1] + type_name[0].upper() + type_name[1:], ())
        else:
            name = groups["name"]
            ops.append(("key", name, choice_elements().get(name, ())))
            if groups["index"] is not None:
                ops.append(_index(int(groups["index"])))
    steps: list[Step] = []
    run: list[tuple[str, tuple[str, ...]]] = []
    for op in ops:
        if isinstance(op, tuple):
            run.append((op[1], op[2]))
            continue
        if run:
            steps.append(_walk(run))
            run = []
        steps.append(op)
    if run:
        steps.append(_walk(run))
    return steps


class Extractor:
    """A compiled expression: `evaluate(resource)` returns the raw FHIR values it selects."""

    __slots__ = ("branches", "expression", "special")

    def __init__(
        self, expression: str, branches: list[tuple[bool, list[Step]]], special: str = ""
    ) -> None:
        self.expression = expression
        self.branches = branches  # (starts at %resource, steps)
        self.special = special

    def evaluate(self, node: Node, root: Node = None) -> list[Node]:
        """Values selected from `node`; `root` is `%resource` for composite components."""
        if self.special == "deceased":
            return _deceased(node)
        if len(self.branches) == 1:  # the common case, without the union bookkeeping
            from_root, steps = self.branches[0]
            selected: list[Node] = [root if from_root else node]
            for step in steps:
                selected = step(selected)
                if not selected:
                    break
            return selected
        out: list[Node] = []
        for from_root, steps in self.branches:
            nodes: list[Node] = [root if from_root else node]
            for step in steps:
                nodes = step(nodes)
                if not nodes:
                    break
            out.extend(nodes)
        return out


def _deceased(resource: Node) -> list[Node]:
    if not isinstance(resource, dict):
        return []
    if "deceasedBoolean" in resource:
        return [resource["deceasedBoolean"] is not False]
    return [True] if "deceasedDateTime" in resource else [False]


def compile_expression(
    expression: str, resource_type: str | None, *, relative: bool = False
) -> Extractor:
    """Compile the branches of `expression` that apply to `resource_type`.

    Branches rooted at another type are dropped (one official expression often covers several
    types); `Resource.` and `DomainResource.` roots apply to every type. With `relative=True`
    the expression is a composite component evaluated against an element (no root type).
    """
    if _DECEASED.match(expression.strip()):
        return Extractor(expression, [], special="deceased")
    branches: list[tuple[bool, list[Step]]] = []
    for branch in split_union(expression):
        text = branch
        as_match = _AS_OPERATOR.match(text)
        if as_match:
            text = f"{as_match['path'].strip()}.as({as_match['type']}){as_match['rest']}"
        if relative:
            from_root = text.startswith("%resource.")
            text = text.removeprefix("%resource.")
            branches.append((from_root, _compile_steps("." + text)))
            continue
        root, _, rest = text.partition(".")
        if root not in (resource_type, "Resource", "DomainResource"):
            continue
        branches.append((False, _compile_steps("." + rest) if rest else []))
    return Extractor(expression, branches)
