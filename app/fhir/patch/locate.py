"""Find *where* a FHIRPath Patch path points: the container, key and index of each match.

A FHIRPath engine returns values, but a patch must change the resource at the place the value
came from. So the path is navigated here, step by step, keeping each match's location. The
supported forms are the ones patch paths use in practice (and in the official test cases):

    Patient.contact[0].name.text         members and indexers
    Patient.identifier.where(use = 'official').period
    Patient.name.first()  /  .last()  /  .single()

The `where(...)` criterion is any FHIRPath expression; it is evaluated with fhirpathpy on the
candidate element. Other functions are refused with a clear message rather than guessed at.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import fhirpathpy

from app.fhir.outcome import Unprocessable
from app.fhir.patch import elements

_FILTER_FUNCTIONS = frozenset({"where"})
_PICK_FUNCTIONS = frozenset({"first", "last", "single"})


@dataclass(frozen=True)
class Step:
    """One step of a path: a member name, an index, or a function with its argument text."""

    kind: str  # "member" | "index" | "where" | "first" | "last" | "single"
    name: str = ""
    index: int = 0
    argument: str = ""


@dataclass
class Node:
    """A matched element and where it lives: `parent[key]`, or `parent[key][index]`."""

    value: Any
    parent: dict[str, Any] | None
    key: str | None
    index: int | None
    type_name: str | None
    parent_type: str | None = None


def parse_path(expression: str, where: str) -> list[Step]:
    """Split a patch path into steps, refusing anything outside the supported subset."""
    steps: list[Step] = []
    for segment in _split_top_level(expression, where):
        steps.extend(_parse_segment(segment, expression, where))
    return steps


def _split_top_level(expression: str, where: str) -> list[str]:
    """Split on '.' outside quotes, backticks, parentheses and brackets."""
    segments: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    while i < len(expression):
        char = expression[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "'`":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                break
        elif char == "." and depth == 0:
            segments.append(expression[start:i])
            start = i + 1
        i += 1
    if quote or depth != 0:
        raise Unprocessable(
            f"{where}: unbalanced quotes or brackets in path {expression!r}", expression=[where]
        )
    segments.append(expression[start:])
    return segments


def _parse_segment(segment: str, expression: str, where: str) -> list[Step]:
    segment = segment.strip()
    name, rest = _take_identifier(segment)
    if not name:
        raise Unprocessable(
            f"{where}: path {expression!r} is not supported in a patch "
            f"(near {segment!r}); use member names, [n], where(), first() or last()",
            expression=[where],
        )
    steps: list[Step] = []
    if rest.startswith("("):
        close = _matching_close(rest)
        argument = rest[1:close].strip()
        rest = rest[close + 1 :]
        if name in _FILTER_FUNCTIONS and argument:
            steps.append(Step("where", argument=argument))
        elif name in _PICK_FUNCTIONS and not argument:
            steps.append(Step(name))
        else:
            raise Unprocessable(
                f"{where}: function {name}({argument}) is not supported in a patch path",
                expression=[where],
            )
    else:
        steps.append(Step("member", name=name))
    while rest:
        close = rest.find("]")
        text = rest[1:close].strip() if rest.startswith("[") and close > 0 else ""
        if not text.isdigit():
            raise Unprocessable(
                f"{where}: {segment!r} in path {expression!r} has an unsupported indexer; "
                f"use a non-negative integer like [0]",
                expression=[where],
            )
        steps.append(Step("index", index=int(text)))
        rest = rest[close + 1 :].strip()
    return steps


def _take_identifier(segment: str) -> tuple[str, str]:
    if segment.startswith("`"):
        end = segment.find("`", 1)
        return (segment[1:end], segment[end + 1 :]) if end > 1 else ("", segment)
    end = 0
    while end < len(segment) and (segment[end].isalnum() or segment[end] == "_"):
        end += 1
    name = segment[:end]
    if name and not (name[0].isalpha() or name[0] == "_"):
        return "", segment
    return name, segment[end:].strip()


def _matching_close(text: str) -> int:
    """Index of the ')' closing the '(' at text[0] (quotes were balanced by the splitter)."""
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "'`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text) - 1


def root_node(resource: dict[str, Any]) -> Node:
    resource_type = resource.get("resourceType")
    return Node(
        resource, None, None, None, resource_type if isinstance(resource_type, str) else None
    )


def locate(resource: dict[str, Any], steps: list[Step], expression: str, where: str) -> list[Node]:
    """All elements the path matches, in document order, each with its location."""
    nodes = [root_node(resource)]
    if steps and steps[0].kind == "member" and steps[0].name[:1].isupper():
        # A leading type name is the resource itself (FHIRPath: `Patient.birthDate`).
        if steps[0].name != resource.get("resourceType"):
            raise Unprocessable(
                f"{where}: path {expression!r} does not start with this resource's type "
                f"{resource.get('resourceType')!r}",
                expression=[where],
            )
        steps = steps[1:]
    for step in steps:
        nodes = _apply_step(nodes, step, resource, where)
    return nodes


def _apply_step(nodes: list[Node], step: Step, resource: dict[str, Any], where: str) -> list[Node]:
    if step.kind == "member":
        return [child for node in nodes for child in children(node, step.name)]
    if step.kind == "index":
        return [nodes[step.index]] if step.index < len(nodes) else []
    if step.kind == "first":
        return nodes[:1]
    if step.kind == "last":
        return nodes[-1:]
    if step.kind == "single":
        if len(nodes) > 1:
            raise Unprocessable(
                f"{where}: single() matched {len(nodes)} elements", expression=[where]
            )
        return nodes
    # fhirpathpy may annotate what it is given, so it works on copies of our documents.
    snapshot = copy.deepcopy(resource)
    context = {"resource": snapshot, "rootResource": snapshot}
    return [node for node in nodes if _matches(node, step.argument, context, where)]


def _matches(node: Node, criterion: str, context: dict[str, Any], where: str) -> bool:
    try:
        result = fhirpathpy.evaluate(copy.deepcopy(node.value), criterion, context)
    except Exception as error:  # fhirpathpy raises bare Exceptions for syntax and type errors
        raise Unprocessable(
            f"{where}: cannot evaluate where({criterion}): {error}", expression=[where]
        ) from error
    return result == [True]


def children(node: Node, name: str) -> list[Node]:
    """The child elements called `name` of `node` (a choice base matches its typed key)."""
    value = node.value
    if not isinstance(value, dict):
        return []
    keys = [name] if (name in value or f"_{name}" in value) else []
    if not keys:
        typed = elements.choice_keys(node.type_name, name) or frozenset()
        keys = [key for key in value if key in typed]
    found: list[Node] = []
    for key in keys:
        content = value.get(key)
        shadow = value.get(f"_{key}")
        if isinstance(content, list) or isinstance(shadow, list):
            # A repeating primitive may have entries only in its `_key` shadow array.
            content = content if isinstance(content, list) else []
            size = max(len(content), len(shadow) if isinstance(shadow, list) else 0)
            for index in range(size):
                item = content[index] if index < len(content) else None
                child_type = elements.child_type(node.type_name, key, item)
                found.append(Node(item, value, key, index, child_type, node.type_name))
        else:
            child_type = elements.child_type(node.type_name, key, content)
            found.append(Node(content, value, key, None, child_type, node.type_name))
    return found
