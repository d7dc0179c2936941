"""YAML -> validated :class:`Spec`, with every problem located at FILE:LINE.

Steps: read and parse the YAML safely (no Python tags), recording the line of
every key; apply ``--set`` overrides; fill the semantic preset; validate with
pydantic; check cross-field rules; resolve kind-dependent defaults. Every
failure becomes one :class:`SpecError`.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from saec.spec.errors import SpecError, format_path
from saec.spec.presets import preset_values
from saec.spec.schema import FlattenSpec, LinearSpec, Spec, SumPool2dSpec, UnflattenSpec, rule_violations

SET_SOURCE = "--set"


@dataclass
class LoadedSpec:
    """A validated spec plus where each of its parts was written."""

    spec: Spec
    file: str
    lines: dict[tuple, int] = field(default_factory=dict)
    overridden: set[tuple] = field(default_factory=set)

    def locate(self, path: tuple) -> tuple[str, int | None]:
        """(file, line) of the longest written prefix of ``path``."""
        return _locate(path, self.file, self.lines, self.overridden)

    def error(self, path: tuple, message: str) -> SpecError:
        """A SpecError at ``path`` (indices into ``layers`` shown by name).

        When ``--set`` changed something inside ``path`` (``--set layers.conv1.kernel_size=40`` and an
        error about ``layers.conv1``), the error stays at the layer's line and names the ``--set``.
        """
        file, line = self.locate(path)
        inside = sorted(o for o in self.overridden if len(o) > len(path) >= 1 and o[:len(path)] == path)
        if file != SET_SOURCE and inside:
            message = f"{message} (after --set {', '.join(self.display_path(o) for o in inside)})"
        return SpecError(message, file=file, line=line, path=self.display_path(path))

    def display_path(self, path: tuple) -> str:
        return _display_path(path, self.spec.model_dump(mode="json"))


# ---------------------------------------------------------------- YAML
class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2), not a string."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: Limits that keep a hostile spec or sweep file from hanging or exhausting the machine.
MAX_FILE_BYTES = 1 << 20  # 1 MiB: the largest shipped spec is ~3 kB
MAX_DEPTH = 32  # nesting of mappings and lists (a spec needs 4)
MAX_NODES = 100_000  # values after alias expansion (a spec has a few hundred)
MAX_ALIASES = 1_000


def read_limited(path: Path, what: str = "spec file") -> str:
    """The UTF-8 text of a spec or sweep file, refused beyond :data:`MAX_FILE_BYTES` or if not a file.

    Raises:
        SpecError: missing, a folder or device, too large, unreadable or not UTF-8 (names the file).
    """
    file = str(path)
    try:
        if path.is_dir():
            raise SpecError(f"is a directory, not a {what}", file=file)
        if path.exists() and not path.is_file():  # a FIFO or /dev/zero would block or never end
            raise SpecError(f"is not a regular file, not a {what}", file=file)
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("no such file", file=file) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(f"is larger than {MAX_FILE_BYTES // 1024} KiB; a {what} is a few kB", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", file=file, line=line) from None


def _read_text(path: Path) -> str:
    return read_limited(path)


#: Characters YAML allows in a document (YAML 1.1 "printable"); anything else is located and refused.
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def _check_printable(text: str, file: str) -> None:
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise SpecError(f"non-printable character U+{ord(bad.group()):04X} at column {col}; remove it",
                        file=file, line=line)


def _check_structure(text: str, file: str) -> None:
    """Refuse deep nesting and alias floods from the token stream, before anything recursive runs."""
    depth = aliases = 0
    openers = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
               yaml.FlowSequenceStartToken)
    closers = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    loader = _SafeLoader(text)
    try:
        while loader.check_token():
            token = loader.get_token()
            if isinstance(token, openers):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(f"nested deeper than {MAX_DEPTH} levels", file=file,
                                    line=token.start_mark.line + 1)
            elif isinstance(token, closers):
                depth -= 1
            elif isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise SpecError(f"more than {MAX_ALIASES} aliases (*name)", file=file,
                                    line=token.start_mark.line + 1)
    finally:
        loader.dispose()


def _record_lines(root: yaml.Node, lines: dict[tuple, int], file: str) -> None:
    """Walk the composed YAML tree (iteratively): line of every path; reject duplicate and non-scalar keys,
    recursive aliases and documents that aliases expand beyond :data:`MAX_NODES` values."""
    stack: list[tuple[yaml.Node, tuple, tuple[int, ...]]] = [(root, (), ())]
    visited = 0
    while stack:
        node, path, ancestors = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise SpecError(f"expands to more than {MAX_NODES:,} values (aliases repeat whole subtrees)", file=file,
                            line=node.start_mark.line + 1)
        if id(node) in ancestors:
            raise SpecError("a recursive alias (a value that contains itself)", file=file,
                            line=node.start_mark.line + 1, path=path)
        lines.setdefault(path, node.start_mark.line + 1)
        inner = ancestors + (id(node),)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise SpecError("a mapping key must be a plain name, not a list or mapping", file=file,
                                    line=line, path=path)
                key = key_node.value
                if key in seen:
                    raise SpecError(f"duplicate key {key!r} (first written at line {seen[key]})",
                                    file=file, line=line, path=path + (key,))
                seen[key] = line
                lines[path + (key,)] = line
                stack.append((value_node, path + (key,), inner))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                stack.append((item, path + (i,), inner))


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML text safely; returns (data, {path: line}).

    Bounded: non-printable characters, nesting deeper than :data:`MAX_DEPTH`, more than
    :data:`MAX_ALIASES` aliases, recursive aliases and alias expansion beyond :data:`MAX_NODES`
    values are refused (located) before anything is constructed.
    """
    _check_printable(text, file)
    try:
        _check_structure(text, file)
    except yaml.MarkedYAMLError:
        pass  # reported, located, by the parse below
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", file=file, line=1)
        lines: dict[tuple, int] = {}
        _record_lines(node, lines, file)
        try:
            data = loader.construct_document(node)
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of 5,000 digits
            raise SpecError(f"a value cannot be read: {str(exc).split(';')[0]}", file=file) from None
        _check_keys_hashable(data, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = f"{problem.strip()} (only plain YAML is accepted; Python tags are refused)"
        else:
            problem = f"YAML syntax error: {problem}"
        raise SpecError(problem, file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=file) from None
    except RecursionError:  # a safety net: the structure checks above make this unreachable in practice
        raise SpecError(f"nested too deeply (at most {MAX_DEPTH} levels)", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _check_keys_hashable(data: Any, file: str) -> None:
    """Keys must be names: a null, number or boolean key is refused too (``--set`` paths are strings)."""
    stack = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecError(f"a mapping key must be a name, got {key!r}", file=file, path=path)
                stack.append((item, path + (key,)))
        elif isinstance(value, list):
            stack.extend((item, path + (i,)) for i, item in enumerate(value))


# ---------------------------------------------------------------- --set
def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"expected KEY=VALUE, got {item!r}", file=SET_SOURCE)
    return key.strip(), value


def _step_into(container: Any, seg: str, shown: str) -> Any:
    """Resolve one path segment: a dict key, a list index, or a layer name."""
    if isinstance(container, list):
        if seg.lstrip("-").isdigit():
            idx = int(seg)
            if not -len(container) <= idx < len(container):
                raise SpecError(f"index {idx} out of range ({len(container)} items)", file=SET_SOURCE, path=shown)
            return idx
        names = [item.get("name") for item in container if isinstance(item, dict)]
        if seg in names:
            return names.index(seg)
        hint = difflib.get_close_matches(seg, [n for n in names if isinstance(n, str)], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else f" (items: {', '.join(map(str, names))})"
        raise SpecError(f"no item named {seg!r}{extra}", file=SET_SOURCE, path=shown)
    if isinstance(container, dict):
        return seg
    raise SpecError("cannot descend into a scalar value", file=SET_SOURCE, path=shown)


def apply_overrides(data: dict, overrides: Iterable[str]) -> set[tuple]:
    """Apply ``KEY=VALUE`` overrides in place; returns the paths they set.

    KEY is a dotted path; list items are addressed by index or, for items with
    a ``name``, by name (``layers.latent.out_features=10``). VALUE is parsed as
    a YAML scalar or flow collection. Missing dict keys are created (a wrong
    name is then reported by validation, located at ``--set``).
    """
    touched: set[tuple] = set()
    for item in overrides:
        key, raw_value = _split_override(item)
        try:
            value = parse_yaml(raw_value, SET_SOURCE)[0] if raw_value.strip() else None
        except SpecError as exc:  # the same bounds as a spec file (aliases, depth, characters)
            shown = raw_value if len(raw_value) <= 60 else raw_value[:57] + "..."
            raise SpecError(f"cannot parse value {shown!r}: {exc.message}", file=SET_SOURCE, path=key) from None
        segs = key.split(".")
        if any(not s for s in segs):
            raise SpecError("empty path segment", file=SET_SOURCE, path=key)
        node: Any = data
        path: tuple = ()
        for depth, seg in enumerate(segs):
            shown = ".".join(segs[: depth + 1])
            step = _step_into(node, seg, shown)
            path += (step,)
            if depth == len(segs) - 1:
                node[step] = value
            else:
                if isinstance(node, dict) and (step not in node or node[step] is None):
                    node[step] = {}
                node = node[step]
        touched.add(path)
    return touched


# ---------------------------------------------------------------- presets
def apply_preset(data: dict) -> None:
    """Fill every semantic field the user left unset from ``data['preset']``."""
    preset = data.get("preset", "saec")
    if not isinstance(preset, str):
        return
    for dotted, value in preset_values(preset, data.get("kind")).items():
        *parents, leaf = dotted.split(".")
        node: Any = data
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)


# ---------------------------------------------------------------- validation errors
def _unwrap(ann: Any) -> list[Any]:
    """Flatten Annotated / Optional / Union into their member types."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(ann) for t in _unwrap(a)]
    return [ann]


def _fields_at(path: tuple, data: Any) -> list[str]:
    """Field names the schema allows at ``path`` (for did-you-mean hints)."""
    anns: list[Any] = [Spec]
    for elem in path:
        nxt: list[Any] = []
        for ann in (a for t in anns for a in _unwrap(t)):
            if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(elem, str):
                if elem in ann.model_fields:
                    nxt.append(ann.model_fields[elem].annotation)
            elif typing.get_origin(ann) is list and isinstance(elem, int):
                nxt.append(typing.get_args(ann)[0])
        anns = nxt
        data = data[elem] if isinstance(data, (dict, list)) else None
    models = [a for t in anns for a in _unwrap(t) if isinstance(a, type) and issubclass(a, BaseModel)]
    if len(models) > 1 and isinstance(data, dict):
        typed = [m for m in models if "type" in m.model_fields
                 and data.get("type") in typing.get_args(m.model_fields["type"].annotation)]
        models = typed or models
    return sorted({f for m in models for f in m.model_fields})


def _data_path(loc: tuple, data: Any, keep_last: bool) -> tuple:
    """Drop union-branch tags from a pydantic ``loc``: keep elements that index the data."""
    out: tuple = ()
    for i, elem in enumerate(loc):
        if isinstance(data, dict) and elem in data:
            out += (elem,)
            data = data[elem]
        elif isinstance(data, list) and isinstance(elem, int) and elem < len(data):
            out += (elem,)
            data = data[elem]
        elif keep_last and i == len(loc) - 1:
            out += (elem,)
    return out


def _display_path(path: tuple, data: Any) -> str:
    """Dotted path with ``layers[i]`` shown as ``layers.<name>``."""
    parts: list[str] = []
    for i, elem in enumerate(path):
        if isinstance(elem, int) and i > 0 and path[i - 1] == "layers" and isinstance(data, list) \
                and elem < len(data) and isinstance(data[elem], dict) and isinstance(data[elem].get("name"), str):
            parts.append(data[elem]["name"])
        elif isinstance(elem, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{elem}]"]
        else:
            parts.append(str(elem))
        if isinstance(data, (dict, list)):
            try:
                data = data[elem]
            except (KeyError, IndexError, TypeError):
                data = None
    return ".".join(parts)


def _locate(path: tuple, file: str, lines: dict[tuple, int], overridden: set[tuple]) -> tuple[str, int | None]:
    if any(path[:cut] in overridden for cut in range(len(path) + 1)):
        return SET_SOURCE, None
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return file, lines[path[:cut]]
    return file, None


def _describe(err: dict, data: Any, path: tuple) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        hint = difflib.get_close_matches(name, _fields_at(path[:-1], data), n=1, cutoff=0.6)
        return f"unknown field {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
    if kind == "missing":
        return "required field missing"
    msg = err["msg"]
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        return msg
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{msg} (got {value!r})"
    return msg


def _validation_error(exc: ValidationError, data: Any, file: str, lines: dict[tuple, int],
                      overridden: set[tuple]) -> SpecError:
    errors = exc.errors()
    located = []
    for err in errors:
        path = _data_path(tuple(err["loc"]), data, keep_last=err["type"] in ("missing", "extra_forbidden"))
        located.append((path, err))
    distinct = {p for p, _ in located}
    # Prefer the most specific location; union branches give several errors for one field.
    # An unknown field first (it often explains a "missing" sibling), then the most specific location;
    # union branches give several errors for one field.
    path, err = max(located, key=lambda pe: (pe[1]["type"] == "extra_forbidden", len(pe[0])))
    message = _describe(err, data, path)
    if len(distinct) > 1:
        message += f" (and {len(distinct) - 1} more problem{'s' if len(distinct) > 2 else ''})"
    where_file, line = _locate(path, file, lines, overridden)
    return SpecError(message, file=where_file, line=line, path=_display_path(path, data))


# ---------------------------------------------------------------- entry point
def _resolve_kind_defaults(spec: Spec) -> None:
    """Fill fields whose default depends on the model kind."""
    for layer in spec.layers:
        if hasattr(layer, "bias") and layer.bias is None:
            layer.bias = spec.kind != "sae" and isinstance(layer, LinearSpec)


def load_spec(path: str | Path, overrides: Iterable[str] = (), *, text: str | None = None) -> LoadedSpec:
    """Load, override, preset-fill and validate a spec file.

    Args:
        path: the YAML file; with ``text``, only the name errors are located at.
        overrides: ``KEY=VALUE`` strings (``--set``), applied before validation.
        text: the YAML itself (e.g. a dict dumped by :func:`saec.api.compile`); None = read ``path``.
    Returns:
        A :class:`LoadedSpec` with every default written in.
    Raises:
        SpecError: for any problem, located at FILE:LINE or at ``--set``.
    """
    file = str(path)
    data, lines = parse_yaml(_read_text(Path(path)) if text is None else text, file)
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping of fields (name, kind, layers, ...)", file=file, line=1)
    overridden = apply_overrides(data, overrides)
    apply_preset(data)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, data, file, lines, overridden) from None
    for loc, message in rule_violations(spec):
        f, line = _locate(loc, file, lines, overridden)
        raise SpecError(message, file=f, line=line, path=_display_path(loc, data))
    _resolve_kind_defaults(spec)
    loaded = LoadedSpec(spec, file, lines, overridden)
    _check_penalty_layers(loaded)
    return loaded


def _check_penalty_layers(loaded: LoadedSpec) -> None:
    spec = loaded.spec
    for term in ("p1", "p2", "a1"):
        pen = getattr(spec.regularizers, term)
        for j, lname in enumerate((pen.layers or []) if pen else []):
            layer = spec.layer(lname)
            if isinstance(layer, (FlattenSpec, UnflattenSpec, SumPool2dSpec)) or not layer.spiking \
                    or spec.kind != "sae":
                raise loaded.error(("regularizers", term, "layers", j),
                                   f"layer {lname!r} has no spiking neurons to regularise")


def resolved_yaml(spec: Spec) -> str:
    """The spec with every default written out, as YAML (for run folders).

    A layer's ``neuron`` override keeps only the fields written: an unset field inherits the default
    neuron, a field set to null means null (no floor), and the file must compile to the same IR.
    """
    data = spec.model_dump(mode="json")
    for layer, dumped in zip(spec.layers, data["layers"]):
        if getattr(layer, "neuron", None) is not None:
            dumped["neuron"] = layer.neuron.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


__all__ = ["LoadedSpec", "SpecError", "load_spec", "apply_overrides", "resolved_yaml", "format_path"]
