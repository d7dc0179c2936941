"""Target profiles: the shipped files load, every fact has a source, and bad profiles give located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from saec.errors import UserError
from saec.targets.formula import FormulaError, ceil_log2, check_formula, evaluate
from saec.targets.profile import PROFILE_DIR, Profile, available_targets, load_profile


def _sources(model) -> list[tuple[str, str]]:
    """(dotted path, source) of every cited block of a profile."""
    found = []

    def walk(obj, path):
        if hasattr(type(obj), "model_fields"):
            if "source" in type(obj).model_fields and obj.source is not None:  # optional on layer kinds
                found.append((path, obj.source))
            for name in type(obj).model_fields:
                walk(getattr(obj, name), f"{path}.{name}" if path else name)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}.{key}")

    walk(model, "")
    return found


def test_the_three_issue_targets_ship_and_load():
    assert {"loihi", "speck", "xylo"} <= set(available_targets())
    for name in available_targets():
        profile = load_profile(name)
        assert isinstance(profile, Profile) and profile.name == name


@pytest.mark.parametrize("name", ["loihi", "speck", "xylo"])
def test_every_block_of_a_shipped_profile_cites_a_vendor_file(name):
    profile = load_profile(name)
    cited = dict(_sources(profile))
    for block in ("neuron", "neuron.decay", "numbers.weight", "numbers.threshold", "numbers.state", "layers", "io"):
        assert block in cited, block
    vendor = {"loihi": "lava", "speck": "sinabs", "xylo": ("rockpool", "xylosim")}[name]
    for path, source in cited.items():
        assert any(v in source for v in ([vendor] if isinstance(vendor, str) else vendor)), (path, source)


def test_speck_profile_holds_the_measured_core_memories():
    cores = load_profile("speck").cores
    ki = 1024
    assert [c["kernel"] // ki for c in cores.cores] == [16, 16, 16, 32, 32, 64, 64, 16, 16]
    assert [c["neuron"] // ki for c in cores.cores] == [64, 64, 64, 32, 32, 16, 16, 16, 16]
    assert {c["bias"] for c in cores.cores} == {ki}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chip.yaml"
    path.write_text(text)
    return path


def _speck_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (PROFILE_DIR / "speck.yaml").read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_a_profile_file_loads_by_path(tmp_path):
    path = _write(tmp_path, (PROFILE_DIR / "xylo.yaml").read_text())
    assert load_profile(str(path)).io.max_inputs == 16


def test_unknown_field_is_located_with_a_suggestion(tmp_path):
    path = _speck_with(tmp_path, "  spike_when: [ge]", "  spike_wen: [ge]")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert err.value.line == _line_of(path, "spike_wen")
    assert err.value.path == "neuron.spike_wen"
    assert "unknown field 'spike_wen'; did you mean 'spike_when'?" in str(err.value)


def test_a_fact_without_its_source_is_refused(tmp_path):
    path = _speck_with(tmp_path, ', source: sinabs 3.1.3 sinabs/backend/dynapcnn/discretize.py}\n  threshold', "}\n  threshold")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert err.value.path == "numbers.weight.source"
    assert err.value.line == _line_of(path, "  weight:")
    assert "required field missing" in str(err.value)


def test_a_formula_that_is_not_integer_arithmetic_is_refused(tmp_path):
    path = _speck_with(tmp_path, "formula: c_out * has_bias\n", "formula: __import__('os').getcwd()\n")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert err.value.path == "cores.memories.bias.formula"
    assert err.value.line == _line_of(path, "__import__")
    assert "formula \"__import__('os').getcwd()\": __import__('os').getcwd() is not allowed" in str(err.value)


def test_core_capacities_must_name_every_memory(tmp_path):
    path = _speck_with(tmp_path, "- {kernel: 16384, neuron: 65536, bias: 1024}", "- {kernel: 16384, neuron: 65536}")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert err.value.path == "cores"
    assert "core 0 gives capacities for ['kernel', 'neuron'], the memories are ['bias', 'kernel', 'neuron']" \
        in str(err.value)


def test_cores_and_their_absence_are_exclusive(tmp_path):
    path = _speck_with(tmp_path, "io:\n", "cores_unknown: why not\nio:\n")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert "give exactly one of `cores`" in str(err.value)
    assert err.value.file == str(path)


def test_a_decay_register_needs_its_width(tmp_path):
    path = _speck_with(tmp_path, "decay: {kind: none,", "decay: {kind: bitshift,")
    with pytest.raises(UserError) as err:
        load_profile(path)
    assert err.value.path == "neuron.decay"
    assert "a bitshift decay needs `bits`" in str(err.value)


def test_unknown_target_names_the_shipped_ones():
    with pytest.raises(UserError) as err:
        load_profile("lohi")
    assert str(err.value) == "--target: unknown target 'lohi'; shipped targets: loihi, speck, xylo (or give a profile file)"


def test_missing_profile_file_is_named(tmp_path):
    with pytest.raises(UserError) as err:
        load_profile(tmp_path / "nope.yaml")
    assert err.value.file == str(tmp_path / "nope.yaml") and "cannot read target profile" in str(err.value)


def test_formula_arithmetic_and_refusals():
    assert [ceil_log2(x) for x in (0, 1, 2, 3, 4, 5, 400, 1024, 1025)] == [0, 0, 1, 2, 2, 3, 9, 10, 11]
    # the paper SAE's 12800 -> 100 linear as a 20x20 conv over 32 channels (TARGETS.md): 2 Mi entries
    tree = check_formula("c_in * 2**(ceil_log2(kh * kw) + ceil_log2(c_out))")
    assert evaluate(tree, {"c_in": 32, "kh": 20, "kw": 20, "c_out": 100}) == 2 * 1024 * 1024
    for bad, why in [("c_in.real", "is not allowed"), ("1.5 * c_in", "is not allowed"), ("c_in +", "not an expression"),
                     ("open(c_in)", "unknown function 'open'")]:
        with pytest.raises(FormulaError, match=why):
            check_formula(bad)
