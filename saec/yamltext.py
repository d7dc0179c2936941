"""YAML with a line for every key: the safe, bounded reader the spec, sweep and target-profile files share.

It sits at the bottom of the house (it imports nothing from saec but the
error type), so every layer that reads a YAML file of the user's locates its
problems the same way: ``FILE:LINE: dotted.path: message``.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from saec.errors import UserError

#: Where ``--set`` overrides are located (they have no file).
SET_SOURCE = "--set"

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


def read_limited(path: Path, what: str = "spec file", *, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of a spec or sweep file, refused beyond :data:`MAX_FILE_BYTES` or if not a file.

    Raises:
        UserError (``error``): missing, a folder or device, too large, unreadable or not UTF-8 (names the file).
    """
    file = str(path)
    try:
        if path.is_dir():
            raise error(f"is a directory, not a {what}", file=file)
        if path.exists() and not path.is_file():  # a FIFO or /dev/zero would block or never end
            raise error(f"is not a regular file, not a {what}", file=file)
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error("no such file", file=file) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise error(f"is larger than {MAX_FILE_BYTES // 1024} KiB; a {what} is a few kB", file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", file=file, line=line) from None


#: Characters YAML allows in a document (YAML 1.1 "printable"); anything else is located and refused.
_NOT_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def _check_printable(text: str, file: str, error: type[UserError]) -> None:
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise error(f"non-printable character U+{ord(bad.group()):04X} at column {col}; remove it",
                        file=file, line=line)


def _check_structure(text: str, file: str, error: type[UserError]) -> None:
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
                    raise error(f"nested deeper than {MAX_DEPTH} levels", file=file,
                                    line=token.start_mark.line + 1)
            elif isinstance(token, closers):
                depth -= 1
            elif isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise error(f"more than {MAX_ALIASES} aliases (*name)", file=file,
                                    line=token.start_mark.line + 1)
    finally:
        loader.dispose()


def _record_lines(root: yaml.Node, lines: dict[tuple, int], file: str, error: type[UserError]) -> None:
    """Walk the composed YAML tree (iteratively): line of every path; reject duplicate and non-scalar keys,
    recursive aliases and documents that aliases expand beyond :data:`MAX_NODES` values."""
    stack: list[tuple[yaml.Node, tuple, tuple[int, ...]]] = [(root, (), ())]
    visited = 0
    while stack:
        node, path, ancestors = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise error(f"expands to more than {MAX_NODES:,} values (aliases repeat whole subtrees)", file=file,
                            line=node.start_mark.line + 1)
        if id(node) in ancestors:
            raise error("a recursive alias (a value that contains itself)", file=file,
                            line=node.start_mark.line + 1, path=path)
        lines.setdefault(path, node.start_mark.line + 1)
        inner = ancestors + (id(node),)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise error("a mapping key must be a plain name, not a list or mapping", file=file,
                                    line=line, path=path)
                key = key_node.value
                if key in seen:
                    raise error(f"duplicate key {key!r} (first written at line {seen[key]})",
                                    file=file, line=line, path=path + (key,))
                seen[key] = line
                lines[path + (key,)] = line
                stack.append((value_node, path + (key,), inner))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                stack.append((item, path + (i,), inner))


def parse_yaml(text: str, file: str, *, error: type[UserError] = UserError,
               empty: str = "the file is empty") -> tuple[Any, dict[tuple, int]]:
    """Parse YAML text safely; returns (data, {path: line}).

    Args:
        text: the YAML.
        file: named in errors.
        error: the error type raised (the spec language raises its :class:`saec.spec.errors.SpecError`).
        empty: the message for a document without content.

    Bounded: non-printable characters, nesting deeper than :data:`MAX_DEPTH`, more than
    :data:`MAX_ALIASES` aliases, recursive aliases and alias expansion beyond :data:`MAX_NODES`
    values are refused (located) before anything is constructed.
    """
    _check_printable(text, file, error)
    try:
        _check_structure(text, file, error)
    except yaml.MarkedYAMLError:
        pass  # reported, located, by the parse below
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise error(empty, file=file, line=1)
        lines: dict[tuple, int] = {}
        _record_lines(node, lines, file, error)
        try:
            data = loader.construct_document(node)
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of 5,000 digits
            raise error(f"a value cannot be read: {str(exc).split(';')[0]}", file=file) from None
        _check_keys_hashable(data, file, error)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = f"{problem.strip()} (only plain YAML is accepted; Python tags are refused)"
        else:
            problem = f"YAML syntax error: {problem}"
        raise error(problem, file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise error(f"YAML error: {exc}", file=file) from None
    except RecursionError:  # a safety net: the structure checks above make this unreachable in practice
        raise error(f"nested too deeply (at most {MAX_DEPTH} levels)", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _check_keys_hashable(data: Any, file: str, error: type[UserError]) -> None:
    """Keys must be names: a null, number or boolean key is refused too (``--set`` paths are strings)."""
    stack = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise error(f"a mapping key must be a name, got {key!r}", file=file, path=path)
                stack.append((item, path + (key,)))
        elif isinstance(value, list):
            stack.extend((item, path + (i,)) for i, item in enumerate(value))


# ---------------------------------------------------------------- validation errors, located
def _unwrap(ann: Any) -> list[Any]:
    """Flatten Annotated / Optional / Union into their member types."""
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(ann) for t in _unwrap(a)]
    return [ann]


def _fields_at(path: tuple, data: Any, root: type[BaseModel]) -> list[str]:
    """Field names the schema ``root`` allows at ``path`` (for did-you-mean hints)."""
    anns: list[Any] = [root]
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


def _locate(path: tuple, file: str, lines: dict[tuple, int], overridden: set[tuple] | frozenset = frozenset()
            ) -> tuple[str, int | None]:
    """(file, line) of the longest written prefix of ``path``; ``--set`` for an overridden one."""
    if any(path[:cut] in overridden for cut in range(len(path) + 1)):
        return SET_SOURCE, None
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return file, lines[path[:cut]]
    return file, None


def _describe(err: dict, data: Any, path: tuple, root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        hint = difflib.get_close_matches(name, _fields_at(path[:-1], data, root), n=1, cutoff=0.6)
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


def validation_error(exc: ValidationError, data: Any, file: str, lines: dict[tuple, int], *, root: type[BaseModel],
                     overridden: set[tuple] | frozenset = frozenset(), error: type[UserError] = UserError
                     ) -> UserError:
    """One located error for a pydantic validation failure of ``data`` (read from ``file``) against ``root``.

    Args:
        exc: pydantic's error.
        data: the parsed YAML.
        file: where it was read from.
        lines: {path: line} from :func:`parse_yaml`.
        root: the model validated (its fields feed the "did you mean" hints).
        overridden: paths set by ``--set`` (located there).
        error: the error type returned.
    Returns:
        ``FILE:LINE: dotted.path: message`` for the most telling problem, counting the others.
    """
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
    message = _describe(err, data, path, root)
    if len(distinct) > 1:
        message += f" (and {len(distinct) - 1} more problem{'s' if len(distinct) > 2 else ''})"
    where_file, line = _locate(path, file, lines, overridden)
    return error(message, file=where_file, line=line, path=_display_path(path, data))
