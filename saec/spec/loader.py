"""YAML -> validated :class:`Spec`, with every problem located at FILE:LINE.

Steps: read and parse the YAML safely (no Python tags), recording the line of
every key; apply ``--set`` overrides; fill the semantic preset; validate with
pydantic; check cross-field rules; resolve kind-dependent defaults. Every
failure becomes one :class:`SpecError`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from saec.spec.errors import SpecError, format_path
from saec.yamltext import (MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, SET_SOURCE, _display_path,  # noqa: F401 (re-exported)
                           _locate, parse_yaml, read_limited, validation_error)
from saec.spec.presets import preset_values
from saec.spec.schema import FlattenSpec, LinearSpec, Spec, SumPool2dSpec, UnflattenSpec, rule_violations


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
def _read_text(path: Path) -> str:
    return read_limited(path, error=SpecError)


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
            value = parse_yaml(raw_value, SET_SOURCE, error=SpecError)[0] if raw_value.strip() else None
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
def _validation_error(exc: ValidationError, data: Any, file: str, lines: dict[tuple, int],
                      overridden: set[tuple]) -> SpecError:
    return validation_error(exc, data, file, lines, root=Spec, overridden=overridden, error=SpecError)


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
    data, lines = parse_yaml(_read_text(Path(path)) if text is None else text, file, error=SpecError,
                             empty="the spec is empty")
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
