"""``python -m rnnc.demo``: what ``make demo`` runs over the gallery.

For every spec: check it, draw it in every view (``out/NAME_VIEW.svg``, or ``.dot``
without Graphviz), compile it to NumPy and PyTorch (the modules go to ``out/``), run it on random inputs (train mode, and generate mode where a layer has
feedback), and print the output shapes; then a table with one row per spec, and the
verification table: both backends on the same parameters and inputs (float64, ragged
lengths, a random teacher-forcing mask), every output and gradient compared.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from rnnc.checks import analyze
from rnnc.compiler import compile as compile_spec
from rnnc.drawing import VIEWS, encode, has_dot, render
from rnnc.files import write_atomic
from rnnc.parse import load_spec
from rnnc.registry import available_backends
from rnnc.summary import summarize
from rnnc.verify import random_inputs, verify


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    specs = sorted(Path(args[0] if args else "specs").glob("*.yaml"))
    out = Path(args[1] if len(args) > 1 else "out")
    out.mkdir(exist_ok=True)
    rows = []
    for path in specs:
        print(f"== {path}")
        analysis = analyze(load_spec(path))
        for diagnostic in analysis.diagnostics:
            print(diagnostic.format())
        if not analysis.ok:
            return 1
        print(summarize(analysis))
        start = time.perf_counter()
        model = compile_spec(analysis, backend="numpy", dtype="float64")
        write_atomic(out / f"{path.stem}_numpy.py", model.source)
        fmt = "svg" if has_dot() else "dot"
        for view in VIEWS:
            write_atomic(
                out / f"{path.stem}_{view}.{fmt}", encode(render(analysis, view=view), fmt)
            )
        if "torch" in available_backends():
            torch_source = compile_spec(analysis, backend="torch", dtype="float64").source
            write_atomic(out / f"{path.stem}_torch.py", torch_source)
        rng = np.random.default_rng(0)
        inputs, lengths = random_inputs(analysis, rng, batch=4, steps=7)
        outputs = model.run(inputs, lengths=lengths)
        shapes = ", ".join(f"{k} {v.shape}" for k, v in outputs.items())
        print(f"  numpy, train mode: {shapes}")
        if any(getattr(layer, "feedback", None) for layer in analysis.spec.layers.values()):
            generated = model.run(inputs, lengths=lengths, mode="generate", steps=7)
            shapes = ", ".join(f"{k} {v.shape}" for k, v in generated.items())
            print(f"  numpy, generate mode: {shapes}")
        finite = all(np.all(np.isfinite(v)) for v in outputs.values())
        rows.append(
            (path.stem, len(model.source.splitlines()), time.perf_counter() - start, finite)
        )
        print()
    print(f"{'spec':24} {'numpy lines':>11} {'compile+run s':>13}  finite")
    for name, lines, seconds, finite in rows:
        print(f"{name:24} {lines:>11} {seconds:>13.2f}  {'yes' if finite else 'NO'}")
    agree = verify_gallery(specs)
    return 0 if all(r[3] for r in rows) and agree else 1


def verify_gallery(specs: list[Path]) -> bool:
    """The cross-backend table: one row per spec and mode (``rnnc verify`` in short)."""
    backends = available_backends()
    if len(backends) < 2:
        print(f"\nverification skipped: one backend installed ({', '.join(backends)})")
        return True
    print(f"\nverification: {' vs '.join(backends)}, float64, ragged lengths, seed 0")
    print(f"{'spec':24} {'mode':9} {'arrays':>6} {'worst rel':>9}  verdict")
    ok = True
    for path in specs:
        rows = verify(analyze(load_spec(path)), backends)
        for mode in dict.fromkeys(r.mode for r in rows):
            mine = [r for r in rows if r.mode == mode]
            worst = max(r.rel_diff for r in mine)
            agree = all(r.ok for r in mine)
            ok = ok and agree
            verdict = "agree" if agree else "DIFFER"
            print(f"{path.stem:24} {mode:9} {len(mine):>6} {worst:>9.1e}  {verdict}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
