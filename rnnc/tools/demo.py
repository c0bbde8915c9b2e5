"""``python -m rnnc.tools.demo``: what ``make demo`` runs over the gallery.

For every spec: check it, draw it in every view (``out/NAME_VIEW.svg``, or ``.dot``
without Graphviz), compile it to NumPy and PyTorch (the modules go to ``out/``), run
it on random inputs (train mode, and generate mode where a layer has feedback), and
print the output shapes. Then a table with one row per spec; the verification table
(both backends on the same parameters and inputs: float64, ragged lengths, a random
teacher-forcing mask, every output and gradient compared); a short ``reverse``
training run of the attention seq2seq with decoded examples and the alignment heatmap
of a held-out example (``out/seq2seq_attention_reverse.alignment.png``); and the
gradient-flow picture of ``bench/gradflow.yaml`` (``out/gradflow.png``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from rnnc.errors import RnncError
from rnnc.front.checks import Analysis, analyze
from rnnc.front.parse import load_spec
from rnnc.runtime.compiler import compile as compile_spec
from rnnc.runtime.files import write_atomic
from rnnc.runtime.registry import usable_backends
from rnnc.runtime.weights import save_weights
from rnnc.tools.drawing import VIEWS, encode, has_dot, render
from rnnc.tools.generate import decode_inputs, held_out, task_accuracy
from rnnc.tools.generate import describe as hypotheses
from rnnc.tools.gradflow import csv_text, describe, gradient_flow, plot_png
from rnnc.tools.summary import summarize
from rnnc.tools.train import Task, alignment_path, symbol, train, write_heatmap
from rnnc.tools.verify import random_inputs, verify


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    specs = sorted(Path(args[0] if args else "specs").glob("*.yaml"))
    out = Path(args[1] if len(args) > 1 else "out")
    out.mkdir(exist_ok=True)
    rows = []
    fmt = "svg" if has_dot() else "dot"
    backends = usable_backends()
    for path in specs:
        print(f"== {path}")
        analysis = analyze(load_spec(path))
        for diagnostic in analysis.diagnostics:
            print(diagnostic.format())
        if not analysis.ok:
            return 1
        print(summarize(analysis))
        start = time.perf_counter()
        for view in VIEWS:
            write_atomic(
                out / f"{path.stem}_{view}.{fmt}", encode(render(analysis, view=view), fmt)
            )
        lines = {}
        for backend in backends:
            model = compile_spec(analysis, backend=backend, dtype="float64")
            write_atomic(out / f"{path.stem}_{backend}.py", model.source)
            lines[backend] = len(model.source.splitlines())
        model = compile_spec(analysis, backend="numpy", dtype="float64")
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
        warnings = len(analysis.warnings)
        rows.append((path.stem, warnings, lines, time.perf_counter() - start, finite))
        print()
    header = "".join(f" {b + ' lines':>12}" for b in backends)
    print(f"{'spec':24} {'check':>8} {'drawn':>14}{header} {'seconds':>8}  runs")
    for name, warnings, lines, seconds, finite in rows:
        check = "ok" if not warnings else f"{warnings} warn"
        counts = "".join(f" {lines[b]:>12}" for b in backends)
        drawn = f"{len(VIEWS)} views ({fmt})"
        print(
            f"{name:24} {check:>8} {drawn:>14}{counts} {seconds:>8.2f}  {'yes' if finite else 'NO'}"
        )
    agree = verify_gallery(specs)
    learned = train_demo(Path(args[0] if args else "specs"), out)
    flow_demo(Path(args[0] if args else "specs").parent / "bench" / "gradflow.yaml", out)
    return 0 if all(r[4] for r in rows) and agree and learned else 1


def train_demo(specs: Path, out: Path) -> bool:
    """A short run of the attention seq2seq on `reverse`, with a few decoded examples,
    the weights and the alignment heatmap beside them."""
    backend = "torch" if "torch" in usable_backends() else "numpy"
    analysis = analyze(load_spec(specs / "seq2seq_attention.yaml"))
    print(f"\ntraining seq2seq_attention on reverse (lengths 3-12, 10 symbols, {backend}) ...")
    result = train(analysis, Task("reverse"), backend=backend, steps=600, batch=64)
    print(
        f"held-out exact match {result.accuracy:.1%} after 600 steps in {result.seconds:.1f} s "
        f"(docs/training.md: 98% and more after 1500)"
    )
    for source, target, guess in result.examples:
        print(f"  {source} -> {guess}  (target {target}) {'ok' if guess == target else 'WRONG'}")
    weights = out / "seq2seq_attention_reverse.safetensors"
    save_weights(weights, result.params)
    if result.alignment is not None:
        print(
            write_heatmap(result.alignment, alignment_path(weights), "seq2seq_attention on reverse")
        )
    beam_demo(analysis, result.params, backend)
    return result.accuracy > 0.5


def beam_demo(analysis: Analysis, params: dict[str, np.ndarray], backend: str) -> None:
    """The trained model decoding the held-out examples with beam 5, 3 hypotheses each
    (rnnc generate SPEC --weights W --task reverse --strategy beam)."""
    task = Task("reverse")
    binding = task.bind(analysis)
    model = compile_spec(analysis, backend=backend, dtype="float32")
    model.load_params(params)
    batch = held_out(task, binding, seed=0)
    inputs, lengths = decode_inputs(batch, binding)
    start = time.perf_counter()
    found = model.generate(
        inputs, lengths, strategy="beam", beam=5, n_best=3, max_steps=batch.targets.shape[1]
    )
    seconds = time.perf_counter() - start
    print(
        f"beam search (beam 5, 3 best): held-out exact match {task_accuracy(found, batch):.1%} "
        f"in {seconds:.1f} s (rnnc generate ... --strategy beam; docs/decoding.md)"
    )
    print("\n".join(hypotheses(found, symbol)[:8]))


def flow_demo(spec: Path, out: Path) -> None:
    """The gradient-flow picture: rnn, gru and lstm (forget bias 1) side by side."""
    if not spec.exists():
        return
    analysis = analyze(load_spec(spec))
    flows = gradient_flow(analysis, steps=100)
    cells = {name: analysis.spec.layers[name].cell for name in flows}  # type: ignore[union-attr]
    print("\ngradient flow (rnnc gradflow bench/gradflow.yaml): ||dL/dh_t|| for a loss at step 99")
    print(describe(flows, cells))
    write_atomic(out / "gradflow.csv", csv_text(flows))
    try:
        write_atomic(out / "gradflow.png", plot_png(flows, "gradient flow over 100 steps", cells))
        print(f"wrote {out / 'gradflow.png'} and {out / 'gradflow.csv'}")
    except RnncError as exc:  # matplotlib missing: the numbers are still there
        print(f"{exc}; wrote {out / 'gradflow.csv'}")


def verify_gallery(specs: list[Path]) -> bool:
    """The cross-backend table: one row per spec and mode (``rnnc verify`` in short)."""
    backends = usable_backends()
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
            worst = max((r.rel_diff for r in mine if r.finite), default=float("nan"))
            agree = all(r.ok for r in mine)
            ok = ok and agree
            verdict = "agree" if agree else "DIFFER"
            if not all(r.finite for r in mine):
                verdict = "NOT FINITE"
            print(f"{path.stem:24} {mode:9} {len(mine):>6} {worst:>9.1e}  {verdict}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
