"""One description of each request, two uses: :class:`Limits` bounds a dataclass field in its annotation
(``Annotated[int, Limits(ge=1, le=4096)]``), the engine writes the dataclasses out as the JSON Schemas of
``/openapi.json``, and :func:`check` holds a request body to exactly that document before any work starts.

Stdlib only (the plugin imports this package inside QGIS). The validator covers the part of JSON Schema that
pydantic writes for dataclasses: type, enum, const, anyOf/oneOf/allOf, $ref, properties, required,
additionalProperties, items, prefixItems, min/maxItems, min/maxLength, minimum/maximum, pattern.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rs_assistant.core.protocol.errors import ErrorCode, ProtocolError

#: No request needs more: a body nested deeper is refused before it is read into objects.
MAX_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Bounds on one field: numbers (``ge``/``le``), strings (characters) and lists (items) (``min_length``/
    ``max_length``), strings (``pattern``). Read by pydantic when it writes the schema; enforced by :func:`check`
    through that schema."""

    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    code: str | None = None  # the ErrorCode to answer when these bounds are broken (default: bad_request)

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = dict(handler(core_schema))
        kind = schema.get("type")
        if self.ge is not None:
            schema["minimum"] = self.ge
        if self.le is not None:
            schema["maximum"] = self.le
        if kind == "array":
            if self.min_length is not None:
                schema["minItems"] = self.min_length
            if self.max_length is not None:
                schema["maxItems"] = self.max_length
        else:
            if self.min_length is not None:
                schema["minLength"] = self.min_length
            if self.max_length is not None:
                schema["maxLength"] = self.max_length
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.code is not None:
            schema["x-error-code"] = self.code
        return schema


def check(value: Any, schema: Mapping[str, Any], schemas: Mapping[str, Any], what: str = "the body") -> None:
    """BAD_REQUEST (its ``param`` the JSON path, e.g. ``options.max_side``) unless ``value`` is valid by
    ``schema``; ``schemas`` resolves ``#/components/schemas/NAME`` and ``#/$defs/NAME`` references."""
    problem = _problem(value, schema, schemas, "", 0)
    if problem is not None:
        path, message, code = problem
        where = path or what
        raise ProtocolError(ErrorCode(code), f"{where}: {message} (see /openapi.json)", param=path or None)


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests lists and objects, counting at most to ``limit + 1``."""
    level, current = 0, [value]
    while current and level <= limit:
        nested: list[Any] = []
        for item in current:
            if isinstance(item, Mapping):
                nested.extend(item.values())
            elif isinstance(item, list):
                nested.extend(item)
        if not nested:
            return level
        level += 1
        current = nested
    return level


def _resolve(schema: Mapping[str, Any], schemas: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = schemas[name]
    return schema


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, Mapping)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if kind == "number":
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    return True


#: (JSON path, what is wrong, the ErrorCode value to answer with)
Problem = tuple[str, str, str]


def _own(path: str, message: str, schema: Mapping[str, Any], bound: bool = False) -> Problem:
    """A violation of ``schema`` itself; a broken bound (size, length, range) answers with the schema's own
    ``x-error-code`` when it has one (Limits.code), anything else with bad_request."""
    code = schema.get("x-error-code") if bound else None
    return path, message, str(code or ErrorCode.BAD_REQUEST.value)


def _problem(
    value: Any, schema: Mapping[str, Any], schemas: Mapping[str, Any], path: str, level: int
) -> Problem | None:
    """The first violation found, else None."""
    if level > MAX_DEPTH:
        return path, f"nested more than {MAX_DEPTH} levels deep", ErrorCode.BAD_REQUEST.value
    schema = _resolve(schema, schemas)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [_resolve(s, schemas) for s in schema[key]]
            problems = [_problem(value, s, schemas, path, level + 1) for s in options]
            failed = [p for p in problems if p is not None]
            if len(failed) == len(problems):
                # the most useful complaint: the one from the option of the value's own type, else the first
                typed = [p for s, p in zip(options, failed) if "type" in s and _is_type(value, s["type"])]
                return (typed or failed)[0]
            if key == "oneOf" and len(problems) - len(failed) > 1:
                return _own(path, "matches more than one of the allowed forms", schema)
    for sub in schema.get("allOf", ()):
        found = _problem(value, sub, schemas, path, level + 1)
        if found is not None:
            return found
    if "const" in schema and value != schema["const"]:
        return _own(path, f"must be {schema['const']!r}, got {_shown(value)}", schema)
    if "enum" in schema and value not in schema["enum"]:
        return _own(path, f"must be one of {', '.join(repr(v) for v in schema['enum'])}, got {_shown(value)}", schema)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            wanted = " or ".join(_TYPE_NAMES.get(str(k), str(k)) for k in kinds)
            return _own(path, f"must be {wanted}, got {_shown(value)}", schema)
    message: str | None = None
    if isinstance(value, str):
        message = _string_problem(value, schema)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        message = _number_problem(value, schema)
    elif isinstance(value, list):
        message = _size_problem(len(value), schema)
        if message is None:
            return _items_problem(value, schema, schemas, path, level)
    elif isinstance(value, Mapping):
        return _object_problem(value, schema, schemas, path, level)
    return None if message is None else _own(path, message, schema, bound=True)


def _string_problem(value: str, schema: Mapping[str, Any]) -> str | None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        least = schema["minLength"]
        return "must not be empty" if least == 1 else f"must have at least {least} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return f"has {len(value)} characters; the limit is {schema['maxLength']}"
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        return f"must match {schema['pattern']}, got {_shown(value)}"
    return None


def _number_problem(value: float, schema: Mapping[str, Any]) -> str | None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            return f"must be between {low:g} and {high:g}, got {_shown(value)}"
        bound = f"must be at least {low:g}" if low is not None else f"must be at most {high:g}"
        return f"{bound}, got {_shown(value)}"
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        return f"must be more than {schema['exclusiveMinimum']:g}, got {_shown(value)}"
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        return f"must be less than {schema['exclusiveMaximum']:g}, got {_shown(value)}"
    return None


def _size_problem(size: int, schema: Mapping[str, Any]) -> str | None:
    if "minItems" in schema and size < schema["minItems"]:
        least = schema["minItems"]
        return "must not be empty" if least == 1 else f"must have at least {least} items, got {size}"
    if "maxItems" in schema and size > schema["maxItems"]:
        return f"has {size} items; the limit is {schema['maxItems']}"
    return None


def _items_problem(
    value: list[Any], schema: Mapping[str, Any], schemas: Mapping[str, Any], path: str, level: int
) -> Problem | None:
    prefix = schema.get("prefixItems", ())
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else schema.get("items")
        if sub is False:
            return _own(path, f"must have at most {len(prefix)} items", schema)
        if sub is not None and sub is not True:
            found = _problem(item, sub, schemas, _join(path, index), level + 1)
            if found is not None:
                return found
    return None


def _object_problem(
    value: Mapping[str, Any], schema: Mapping[str, Any], schemas: Mapping[str, Any], path: str, level: int
) -> Problem | None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            return _own(_join(path, name), "is missing", schema)
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            sub = properties[name]
        elif extra is False:
            known = ", ".join(properties)
            return _own(_join(path, str(name)), f"is not a known field{f' (known: {known})' if known else ''}", schema)
        elif isinstance(extra, Mapping):
            sub = extra
        else:
            continue
        found = _problem(item, sub, schemas, _join(path, str(name)), level + 1)
        if found is not None:
            return found
    return None
