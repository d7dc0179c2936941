"""The spec field reference (``docs/spec.md``), generated from the schema itself.

Every field's type, default and meaning already live in :mod:`saec.spec.schema`
(its ``description`` texts) and every semantic preset value in
:mod:`saec.spec.presets`; this module renders them as Markdown so that the
documentation cannot drift from the code (``tests/spec/test_docgen.py``
checks that the committed file equals the output).

Regenerate with::

    python -m saec.spec.docgen > docs/spec.md
"""

from __future__ import annotations

import json
from typing import Any

from saec.spec.presets import PRESETS, REFERENCE_SAE_EXTRA
from saec.spec.schema import Spec

_PRESET_ORDER = ("saec", "reference", "paper")


def _value(value: Any) -> str:
    """A YAML-ish rendering of a default or preset value for a table cell."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _type_of(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """Short type text of one JSON-schema property: enum values, ranges, nullable."""
    if "$ref" in node:
        return "section"
    if "anyOf" in node:
        parts = [_type_of(n, defs) for n in node["anyOf"]]
        return " or ".join(p for p in parts if p != "null") + (" or null" if "null" in parts else "")
    if "enum" in node:
        return " / ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    kind = node.get("type", "any")
    if kind == "array":
        item = node.get("items", {})
        inner = "layer" if "oneOf" in item else _type_of(item, defs)
        size = ""
        if node.get("minItems") is not None and node.get("minItems") == node.get("maxItems"):
            size = f"{node['minItems']} x "
        return f"list of {size}{inner}"
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            bounds.append(f"{sign} {node[key]:g}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _target(node: dict[str, Any]) -> str | None:
    """Name of the section a property refers to (directly or through a nullable anyOf)."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    for option in node.get("anyOf", []):
        if "$ref" in option:
            return option["$ref"].rsplit("/", 1)[-1]
    return None


def _presets(path: str) -> str:
    """Preset values of a semantic field as ``saec / reference / paper`` (empty when not semantic)."""
    values = []
    for name in _PRESET_ORDER:
        if path in PRESETS[name]:
            values.append(_value(PRESETS[name][path]))
        elif name == "reference" and path in REFERENCE_SAE_EXTRA:
            values.append(f"{_value(REFERENCE_SAE_EXTRA[path])} (SAE)")
        else:
            values.append("-")
    return " / ".join(values) if any(v != "-" for v in values) else ""


def _section(title: str, prefix: str, schema: dict[str, Any], defs: dict[str, Any], out: list[str],
             seen: set[str]) -> None:
    required = set(schema.get("required", []))
    rows, nested = [], []
    for key, node in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        ref = _target(node)
        default = "required" if key in required else _value(node.get("default"))
        description = node.get("description", "")
        if ref is None and node.get("type") == "array" and "$ref" in node.get("items", {}):
            ref = node["items"]["$ref"].rsplit("/", 1)[-1]
        kind = _type_of(node, defs) if ref is None else ("section" if "anyOf" not in node else "section or null")
        rows.append(f"| `{path}` | {_cell(kind)} | {_cell(default)} | {_cell(_presets(path))} | {_cell(description)} |")
        if ref is not None and ref not in seen:
            nested.append((path, ref))
    out += [f"## {title}", "", "| field | type | default | preset saec / reference / paper | meaning |",
            "|---|---|---|---|---|", *rows, ""]
    for path, ref in nested:
        seen.add(ref)
        _section(f"`{path}`", f"{path}.", defs[ref], defs, out, seen)


def render() -> str:
    """The whole field reference as Markdown."""
    schema = Spec.model_json_schema()
    defs = schema["$defs"]
    out = [
        "# Spec field reference",
        "",
        "Generated from `saec/spec/schema.py` and `saec/spec/presets.py` by",
        "`python -m saec.spec.docgen > docs/spec.md`; do not edit by hand.",
        "A semantic field left unset takes its preset's value (column 4); any other unset field",
        "takes the default (column 3). `saec compile` prints, and every run's `spec.yaml` records,",
        "the value each field resolved to. What the semantic fields mean: `docs/semantics.md`.",
        "",
    ]
    seen: set[str] = set()
    _section("Top level", "", schema, defs, out, seen)
    layers = schema["properties"]["layers"]["items"]["discriminator"]["mapping"]
    out += ["## Layers (`layers[i]`, chosen by `type`)", ""]
    for type_name, ref in layers.items():
        name = ref.rsplit("/", 1)[-1]
        seen.add(name)
        _section(f"layer `type: {type_name}`", "layers[i].", defs[name], defs, out, seen)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
