"""Golden sources: the exact module each backend generates for a few gallery specs.

Generated code is part of what users read and keep (``rnnc compile -o model.py``), so
a change to it should be a decision, seen in review. When a change is meant, regenerate
with ``RNNC_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and commit the new files.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

import rnnc
from rnnc.runtime.registry import available_backends
from tests.conftest import ROOT

GOLDEN = Path(__file__).parent / "golden"
SPECS = ["elman_rnn", "peephole_lstm", "teacher_forcing_rnn"]
CASES = [
    pytest.param(spec, backend, id=f"{spec}-{backend}")
    for spec in SPECS
    for backend in ("numpy", "torch")
]


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_generated_source_is_the_golden_one(spec: str, backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"the {backend} backend is not installed")
    source = rnnc.compile(rnnc.load_spec(ROOT / "specs" / f"{spec}.yaml"), backend=backend).source
    path = GOLDEN / f"{spec}_{backend}.py"
    if os.environ.get("RNNC_UPDATE_GOLDEN"):
        path.write_text(source)
    expected = path.read_text()
    if source != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), source.splitlines(True), str(path), "generated", n=2
            )
        )
        pytest.fail(
            f"{backend} source for {spec} changed (RNNC_UPDATE_GOLDEN=1 regenerates):\n{diff[:4000]}"
        )


def test_generated_sources_are_deterministic() -> None:
    spec = rnnc.load_spec(ROOT / "specs" / "seq2seq_attention.yaml")
    for backend in available_backends():
        first = rnnc.compile(spec, backend=backend).source
        assert rnnc.compile(spec, backend=backend).source == first
