"""docs/spec.md is the schema rendered, and stays so."""

from __future__ import annotations

from pathlib import Path

from saec.spec import docgen
from saec.spec.presets import PRESETS
from saec.spec.schema import Spec

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def test_committed_reference_is_up_to_date():
    assert DOC.read_text() == docgen.render(), "regenerate: python -m saec.spec.docgen > docs/spec.md"


def test_every_top_level_field_and_semantic_preset_field_is_documented():
    text = docgen.render()
    for name in Spec.model_fields:
        assert f"| `{name}` |" in text
    for preset in PRESETS.values():
        for path in preset:
            assert f"| `{path}` |" in text, path


def test_preset_column_shows_each_preset_value():
    text = docgen.render()
    row = next(line for line in text.splitlines() if line.startswith("| `neuron.lower_bound` |"))
    assert "null / -1.0 / -1.0" in row
