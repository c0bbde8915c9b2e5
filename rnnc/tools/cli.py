"""The ``rnnc`` command line.

Exit codes: 0 success; 1 the spec or data is wrong (a message, never a traceback);
2 the command line is wrong; 3 an internal error (a bug in rnnc: please report it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import resources

from rnnc.errors import Diagnostic, RnncError, SpecError, did_you_mean
from rnnc.front.cells import builtin_cells
from rnnc.front.checks import Analysis, analyze
from rnnc.front.equations import Cell
from rnnc.front.parse import load_spec
from rnnc.front.spec import Spec
from rnnc.runtime.compiler import DTYPES
from rnnc.runtime.compiler import compile as compile_spec
from rnnc.runtime.files import overwritten_input, write_atomic
from rnnc.runtime.registry import available_backends, usable_backends
from rnnc.tools.summary import memory_warning, summarize
from rnnc.version import __version__

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
SCHEMA_FILE = "rnnc.schema.json"


class UsageError(Exception):
    """The command line asks for something that does not exist (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with warnings.catch_warnings():
            # NumPy's overflow warnings say less than the commands do (verify names the
            # arrays that are not finite, and on which backend)
            warnings.simplefilter("ignore", RuntimeWarning)
            return run(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"rnnc: error: {exc}\n")
    except RnncError as exc:
        print(exc.report() if isinstance(exc, SpecError) else f"rnnc: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except MemoryError:
        print(
            "rnnc: out of memory: the model or its data does not fit in this machine's "
            "memory (rnnc check shows the size of its parameters)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except OSError as exc:  # a file we were asked to write or read
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rnnc: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"rnnc: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in rnnc; run again with --debug for a traceback and report it.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK  # pragma: no cover - parser.exit does not return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnc",
        description="A compiler for recurrent neural networks described in YAML.",
    )
    parser.add_argument("--version", action="version", version=f"rnnc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate specs and print a summary")
    check.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    check.add_argument("--batch", type=_positive, default=32, help="example batch size (32)")
    check.add_argument(
        "--steps", type=_positive, default=10, help="example steps per sequence (10)"
    )
    check.set_defaults(run=run_check)

    compile_ = sub.add_parser("compile", help="generate a standalone model module")
    compile_.add_argument("spec", metavar="SPEC", help="a spec file (YAML)")
    compile_.add_argument(
        "--backend", default="numpy", help="numpy (default) or another installed backend"
    )
    compile_.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="float32 (default) or float64"
    )
    compile_.add_argument("-o", "--output", help="write the module here (default: print it)")
    compile_.set_defaults(run=run_compile)

    bench = sub.add_parser("bench", help="time the backends against torch.nn's own layers")
    bench.add_argument("spec", metavar="SPEC", help="a spec file (YAML)")
    bench.add_argument("--batch", type=_positive, default=32, help="batch size (32)")
    bench.add_argument("--steps", type=_positive, default=100, help="sequence length (100)")
    bench.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="float32 (default) or float64"
    )
    bench.add_argument(
        "--repeats", type=_positive, default=5, help="timed repeats; the median is shown (5)"
    )
    bench.add_argument(
        "--threads", type=_positive, default=1, help="threads for BLAS and torch (1)"
    )
    bench.set_defaults(run=run_bench_command)

    render = sub.add_parser(
        "render", help="draw a spec (rolled, unrolled, or a cell) with Graphviz"
    )
    render.add_argument(
        "spec", nargs="?", metavar="SPEC", help="a spec file (YAML); optional with --cell"
    )
    render.add_argument(
        "-o", "--output", help="write here; the suffix picks the format (default: DOT to stdout)"
    )
    render.add_argument(
        "--view",
        choices=("rolled", "unrolled", "cell"),
        default="unrolled",
        help="unrolled (default)",
    )
    render.add_argument(
        "--steps", type=_positive, default=None, help="steps drawn per time axis (4)"
    )
    render.add_argument(
        "--cell", help="with --view cell: the cell to draw (a built-in or the spec's)"
    )
    render.add_argument(
        "--format", choices=("svg", "png", "pdf", "dot"), default=None, help="overrides the suffix"
    )
    render.add_argument(
        "--attention",
        choices=("auto", "each", "bundled"),
        default="auto",
        help="attention edges: each memory step to each query step, or one per query step",
    )
    render.set_defaults(run=run_render)

    train = sub.add_parser("train", help="train a spec on a synthetic sequence task")
    train.add_argument("spec", metavar="SPEC", help="a spec file (YAML)")
    train.add_argument(
        "--task",
        required=True,
        help="copy, reverse, sort, sum, parity or echo (see docs/training.md)",
    )
    train.add_argument("--backend", default="torch", help="torch (default) or numpy")
    train.add_argument("--steps", type=_positive, default=1500, help="optimiser steps (1500)")
    train.add_argument("--batch", type=_positive, default=64, help="examples per step (64)")
    train.add_argument(
        "--lr", type=_positive_real, default=3e-3, help="Adam's learning rate (3e-3)"
    )
    train.add_argument("--clip", type=_positive_real, default=1.0, help="gradient norm clip (1.0)")
    train.add_argument("--seed", type=_seed, default=0, help="parameters and data (0)")
    train.add_argument("--vocab", type=_positive, default=10, help="task symbols (10)")
    train.add_argument("--lengths", default="3-12", help="sequence lengths, MIN-MAX (3-12)")
    train.add_argument(
        "-o",
        "--output",
        help="save the weights (.safetensors or .npz); with attention, also the alignment "
        "heatmap of a held-out example beside them (w.safetensors -> w.alignment.png)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress, only the result")
    train.set_defaults(run=run_train)

    gradflow = sub.add_parser(
        "gradflow", help="plot how far back gradients reach through each recurrent layer"
    )
    gradflow.add_argument("spec", metavar="SPEC", help="a spec file (YAML)")
    gradflow.add_argument(
        "-o", "--output", required=True, help="the picture (.png; the CSV goes beside it) or a .csv"
    )
    gradflow.add_argument("--steps", type=_positive, default=100, help="sequence length (100)")
    gradflow.add_argument("--batch", type=_positive, default=16, help="random examples (16)")
    gradflow.add_argument("--seed", type=_seed, default=0, help="parameters and inputs (0)")
    gradflow.set_defaults(run=run_gradflow)

    generate = sub.add_parser("generate", help="decode with trained weights: greedy, beam, sample")
    generate.add_argument("spec", metavar="SPEC", help="a spec file (YAML) with a decoder")
    generate.add_argument("--weights", required=True, help="trained weights (.safetensors or .npz)")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", action="append", metavar='NAME="3 5 7"', help="one example's input (repeat)"
    )
    source.add_argument("--inputs", metavar="FILE.jsonl", help="one example per line (JSON)")
    source.add_argument("--task", help="the held-out examples of rnnc train --task TASK")
    generate.add_argument("--vocab", type=_positive, default=10, help="--task: symbols (10)")
    generate.add_argument("--lengths", default="3-12", help="--task: lengths, MIN-MAX (3-12)")
    generate.add_argument("--bos", type=_seed, default=1, help="the decoder's first token (1)")
    generate.add_argument("--backend", default="numpy", help="numpy (default) or torch")
    generate.add_argument("--strategy", choices=("greedy", "beam", "sample"), default=None)
    for flag, kind in (
        ("--beam", _positive), ("--n-best", _positive), ("--max-steps", _positive),
        ("--eos", _seed), ("--pad", _seed), ("--top-k", _seed),
        ("--length-penalty", float), ("--temperature", float), ("--top-p", float),
    ):  # fmt: skip
        generate.add_argument(flag, type=kind, default=None, help="(the spec's generation block)")
    generate.add_argument("--suppress", default=None, help="tokens never generated: 3,4")
    generate.add_argument("--seed", type=_seed, default=0, help="sampling; --task: data (0)")
    generate.set_defaults(run=run_generate)

    verify = sub.add_parser("verify", help="run every backend on the same inputs and compare")
    verify.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (YAML)")
    verify.add_argument(
        "--backends",
        default=None,
        help="comma-separated, the first is the reference (default: every installed one)",
    )
    verify.add_argument(
        "--dtype", choices=DTYPES, default="float64", help="float64 (default) or float32"
    )
    verify.add_argument(
        "--lengths", choices=("ragged", "full"), default="ragged", help="ragged (default) or full"
    )
    verify.add_argument(
        "--mode", choices=("train", "generate", "both"), default="both", help="both (default)"
    )
    verify.add_argument("--seed", type=_seed, default=0, help="parameters and inputs (0)")
    verify.add_argument("--batch", type=_positive, default=3, help="batch size (3)")
    verify.add_argument("--steps", type=_positive, default=5, help="steps per sequence (5)")
    verify.add_argument("--quiet", action="store_true", help="one line per spec, no table")
    verify.set_defaults(run=run_verify)

    schema = sub.add_parser("schema", help="print the JSON Schema of the spec language")
    schema.add_argument("-o", "--output", help="write it to this file")
    schema.set_defaults(run=run_schema)

    init = sub.add_parser("init", help="start a spec from a gallery template")
    init.add_argument("template", nargs="?", help="a gallery spec name (omit to list them)")
    init.add_argument(
        "-o", "--output", help="write the spec to this file (and the schema beside it)"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(run=run_init)

    cells = sub.add_parser("cells", help="list the built-in cells, or show one")
    cells.add_argument("cell", nargs="?", help="a cell name")
    cells.add_argument("--input", type=_positive, default=None, help="input size for shapes")
    cells.add_argument("--hidden", type=_positive, default=None, help="hidden size for shapes")
    cells.add_argument("--spec", help="also look for the cell among this spec's cells")
    cells.set_defaults(run=run_cells)
    return parser


def _integer(low: int, high: int, high_text: str | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {high_text or high}, found {value}"
            )
        return value

    return parse


_positive = _integer(1, 1_000_000)
_seed = _integer(0, 2**63 - 1, "2**63 - 1")


def _positive_real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, found {text!r}")
    return value


def _output(path: str, inputs: Sequence[str | None], suffixes: Sequence[str] = ()) -> None:
    """Refuse (a usage error, exit 2) ``path`` as an output file when it is one of the
    command's inputs, or when ``suffixes`` are given and it has none of them."""
    if suffixes and not path.endswith(tuple(suffixes)):
        raise UsageError(f"-o takes a {' or '.join(suffixes)} file, found {path!r}")
    clash = overwritten_input(path, inputs)
    if clash is not None:
        raise UsageError(f"-o {path} would write over the input {clash}; choose another file")


# --- check -----------------------------------------------------------------------------


def run_check(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for index, path in enumerate(args.specs):
        if index:
            print()
        try:
            spec = load_spec(path)
        except SpecError as exc:
            _print_diagnostics(exc.diagnostics, path)
            status = EXIT_INVALID
            continue
        analysis = analyze(spec)
        _print_diagnostics(analysis.diagnostics, path)
        if analysis.ok:
            print(f"{path}: " + summarize(analysis, batch=args.batch, steps=args.steps))
            warning = memory_warning(analysis)
            if warning:
                print(f"{path}: warning: {warning}", file=sys.stderr)
        else:
            status = EXIT_INVALID
    return status


def _print_diagnostics(diagnostics: Sequence[Diagnostic], path: str) -> None:
    if not diagnostics:
        return
    for diagnostic in diagnostics:
        print(diagnostic.format(), file=sys.stderr)
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    counts = [
        f"{n} {word}{'s' if n != 1 else ''}"
        for n, word in ((errors, "error"), (warnings, "warning"))
        if n
    ]
    print(f"{path}: {', '.join(counts)}", file=sys.stderr)


# --- compile -----------------------------------------------------------------------------


def _installed(backend: str) -> str:
    """``backend``, if it is installed; a usage error naming the installed ones if not."""
    names = available_backends()
    if backend not in names:
        raise UsageError(
            f"unknown backend {backend!r}{did_you_mean(backend, names)}; "
            f"installed: {', '.join(names) or 'none'}"
        )
    return backend


def _checked(path: str) -> Analysis:
    """The analysis of a spec file that passes its checks (else SpecError: exit 1)."""
    analysis = analyze(load_spec(path))
    if not analysis.ok:
        raise SpecError(analysis.errors)
    return analysis


def run_compile(args: argparse.Namespace) -> int:
    _installed(args.backend)
    if args.output:
        _output(args.output, [args.spec])
    model = compile_spec(load_spec(args.spec), backend=args.backend, dtype=args.dtype)
    if args.output:
        write_atomic(args.output, model.source)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(model.source)
    return EXIT_OK


def run_render(args: argparse.Namespace) -> int:
    from rnnc.tools.drawing import encode, output_format, render

    if args.spec is None and not (args.view == "cell" and args.cell):
        raise UsageError("render needs a SPEC (or --view cell --cell NAME for a built-in cell)")
    try:
        fmt = output_format(args.output, args.format)
    except RnncError as exc:
        raise UsageError(str(exc)) from None
    if args.output:
        _output(args.output, [args.spec])
    analysis = analyze(load_spec(args.spec)) if args.spec else None
    if analysis is not None:
        for diagnostic in analysis.diagnostics:  # drawn in red too; said here as well
            print(diagnostic.format(), file=sys.stderr)
    drawing = render(
        analysis, view=args.view, steps=args.steps, cell=args.cell, attention=args.attention
    )
    data = encode(drawing, fmt)
    if args.output:
        write_atomic(args.output, data)
        print(f"wrote {args.output} ({args.view}, {fmt})", file=sys.stderr)
    elif fmt == "dot":
        sys.stdout.write(data.decode("utf-8"))
    else:
        sys.stdout.buffer.write(data)
    return EXIT_OK


def run_gradflow(args: argparse.Namespace) -> int:
    from rnnc.tools.gradflow import csv_text, describe, gradient_flow, plot_png

    _output(args.output, [args.spec], (".png", ".csv"))
    picture_wanted = args.output.endswith(".png")
    csv_path = args.output.removesuffix(".png") + ".csv"
    if picture_wanted:
        _output(csv_path, [args.spec])
    analysis = _checked(args.spec)
    flows = gradient_flow(analysis, steps=args.steps, batch=args.batch, seed=args.seed)
    cells = {name: analysis.spec.layers[name].cell for name in flows}  # type: ignore[union-attr]
    table = csv_text(flows)
    if picture_wanted:
        title = f"{analysis.spec.name}: gradient of a loss at step {args.steps - 1}"
        picture = plot_png(flows, title, cells)  # made before anything is written
        write_atomic(args.output, picture)
        write_atomic(csv_path, table)
        print(f"wrote {args.output} and {csv_path}", file=sys.stderr)
    else:
        write_atomic(args.output, table)
        print(f"wrote {args.output}", file=sys.stderr)
    print(describe(flows, cells))
    return EXIT_OK


def run_train(args: argparse.Namespace) -> int:
    from rnnc.runtime.weights import save_weights
    from rnnc.tools.train import TASKS, Task, alignment_path, train, write_heatmap

    if args.task not in TASKS:
        raise UsageError(
            f"unknown task {args.task!r}{did_you_mean(args.task, TASKS)}; tasks: {', '.join(TASKS)}"
        )
    _installed(args.backend)
    if args.output:
        _output(args.output, [args.spec], (".safetensors", ".npz"))
    low, high = _lengths(args.lengths)
    analysis = _checked(args.spec)
    task = Task(args.task, vocab=args.vocab, min_len=low, max_len=high)
    task.bind(analysis)  # a task that does not fit is refused before anything runs
    tty = sys.stderr.isatty()

    def report(step: int, loss: float, accuracy: float | None) -> None:
        if args.quiet:
            return
        acc = f"  held-out accuracy {accuracy:.1%}" if accuracy is not None else ""
        if tty:
            filled = int(30 * step / args.steps)
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r  [{bar}] step {step}/{args.steps}  loss {loss:.4f}{acc}  ")
            if step == args.steps:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"step {step}/{args.steps}  loss {loss:.4f}{acc}\n")
        sys.stderr.flush()

    result = train(
        analysis,
        task,
        backend=args.backend,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        clip=args.clip,
        report=report,
        report_every=10 if tty else max(1, args.steps // 10),
    )
    print(
        f"{analysis.spec.name} on {args.task} ({args.backend}): held-out accuracy "
        f"{result.accuracy:.1%} after {args.steps} steps in {result.seconds:.1f} s"
    )
    for source, target, guess in result.examples:
        mark = "ok" if guess == target else "WRONG"
        print(f"  {source} -> {guess}  (target {target}) {mark}")
    if args.output:
        save_weights(args.output, result.params)
        print(f"wrote {args.output}", file=sys.stderr)
    if result.alignment is None:
        return EXIT_OK
    if not args.output:
        print(
            "alignment heatmap not written: it goes beside the weights "
            "(-o w.safetensors writes w.alignment.png)",
            file=sys.stderr,
        )
        return EXIT_OK
    about = f"{analysis.spec.name} on {args.task}"
    print(write_heatmap(result.alignment, alignment_path(args.output), about), file=sys.stderr)
    return EXIT_OK


def run_generate(args: argparse.Namespace) -> int:
    from rnnc.ir.program import time_axes
    from rnnc.runtime.compiler import compile as compile_spec
    from rnnc.runtime.weights import load_weights
    from rnnc.tools import generate as g
    from rnnc.tools.train import Task, symbol

    _installed(args.backend)
    analysis = _checked(args.spec)
    model = compile_spec(analysis, backend=args.backend, dtype="float32")
    fed = time_axes(analysis)[2]  # the input a decoder's predictions replace
    if not fed:
        raise RnncError(f"{analysis.spec.name} has no layer with feedback: nothing to generate")
    model.load_params(load_weights(args.weights, expected=model.param_shapes()))
    suppress = None
    if args.suppress is not None:
        try:
            suppress = [int(t) for t in args.suppress.replace(",", " ").split()]
        except ValueError:
            raise UsageError(f"--suppress takes token ids: 3,4 (found {args.suppress!r})") from None
    options = {
        "strategy": args.strategy, "beam": args.beam, "n_best": args.n_best,
        "max_steps": args.max_steps, "eos": args.eos, "pad": args.pad,
        "length_penalty": args.length_penalty, "temperature": args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "suppress": suppress, "seed": args.seed,
    }  # fmt: skip
    if args.task is not None:
        low, high = _lengths(args.lengths)
        task = Task(args.task, vocab=args.vocab, min_len=low, max_len=high)
        binding = task.bind(analysis)
        if binding.kind != "seq2seq":
            raise RnncError(f"task {args.task!r} has no sequence to decode")
        batch = g.held_out(task, binding, args.seed)
        inputs, lengths = g.decode_inputs(batch, binding)
        options["max_steps"] = options["max_steps"] or batch.targets.shape[1]
        result = model.generate(inputs, lengths, **options)
        lines = g.describe(result, symbol)
        print("\n".join(lines[: 5 * (1 + result.tokens.shape[1])]))
        print(
            f"{analysis.spec.name} on {args.task}: held-out accuracy "
            f"{g.task_accuracy(result, batch):.1%} ({len(batch.targets)} examples, "
            f"{args.strategy or analysis.spec.generation.strategy})"
        )
        return EXIT_OK
    if args.inputs is not None:
        examples = g.read_examples(analysis, args.inputs)
    else:
        examples = [dict(g.parse_input(analysis, text) for text in args.input)]
    inputs, lengths = g.batch_of(analysis, examples, fed[0], args.bos)
    result = model.generate(inputs, lengths or None, **options)
    print("\n".join(g.describe(result)))
    return EXIT_OK


def _lengths(text: str) -> tuple[int, int]:
    """MIN-MAX sequence lengths of a task (a usage error if not)."""
    try:
        low, high = (int(n) for n in text.split("-"))
        assert 1 <= low <= high
    except (ValueError, AssertionError):
        raise UsageError(f"--lengths takes MIN-MAX with 1 <= MIN <= MAX, found {text!r}") from None
    return low, high


def _backend_names(text: str | None) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()] if text else usable_backends()
    for name in names:
        _installed(name)
    if len(names) < 2 and not text:  # only one is usable here: say how to get another
        raise RnncError(
            f"verify compares two backends or more, and only {', '.join(names) or 'none'} can "
            "run here: install PyTorch for the torch backend (pip install 'rnnc[torch]')"
        )
    if len(names) < 2:
        raise UsageError(f"verify compares two backends or more; got {', '.join(names) or 'none'}")
    return names


def run_verify(args: argparse.Namespace) -> int:
    from rnnc.tools.verify import format_rows, summary, verify

    backends = _backend_names(args.backends)
    modes = ("train", "generate") if args.mode == "both" else (args.mode,)
    failed = []
    for path in args.specs:
        analysis = _checked(path)
        rows = verify(
            analysis,
            backends,
            dtype=args.dtype,
            ragged=args.lengths == "ragged",
            modes=modes,
            seed=args.seed,
            batch=args.batch,
            steps=args.steps,
        )
        print(f"{path}: {', '.join(backends)} {summary(rows, args.dtype)}")
        if not args.quiet:
            print(format_rows(rows, backends[0]))
        differ = sorted({f"{r.mode} {r.what} {r.name}" for r in rows if not r.ok and r.finite})
        not_finite = sorted(
            f"{r.mode} {r.what} {r.name} (on {r.not_finite_on(backends[0])})"
            for r in rows
            if not r.finite
        )
        for says, names in (("backends differ in", differ), ("not finite", not_finite)):
            if names:
                print(f"rnnc: {path}: {says}: {', '.join(names[:10])}", file=sys.stderr)
        if differ or not_finite:
            failed.append(path)
    return EXIT_INVALID if failed else EXIT_OK


def run_bench_command(args: argparse.Namespace) -> int:
    from rnnc.tools.bench import blas_description, format_rows, run_bench

    analysis = _checked(args.spec)
    rows = run_bench(
        analysis,
        batch=args.batch,
        steps=args.steps,
        dtype=args.dtype,
        repeats=args.repeats,
        threads=args.threads,
        show_progress=sys.stderr.isatty(),
    )
    print(
        f"{analysis.spec.name}: batch {args.batch}, steps {args.steps}, {args.dtype}, "
        f"{args.threads} thread(s), median of {args.repeats}; NumPy on {blas_description()}"
    )
    print(format_rows(rows))
    return EXIT_OK


# --- schema and init -------------------------------------------------------------------


def schema_text() -> str:
    schema = Spec.model_json_schema(by_alias=True)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def run_schema(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def gallery() -> dict[str, str]:
    """Gallery template name -> YAML text."""
    folder = resources.files("rnnc.gallery")
    return {
        entry.name.removesuffix(".yaml"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def run_init(args: argparse.Namespace) -> int:
    templates = gallery()
    if args.template is None and (args.output or args.force):
        raise UsageError("init -o and --force need a TEMPLATE (rnnc init lists them)")
    if args.template is None:
        for name, text in templates.items():
            first = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "")
            print(f"{name:28} {first}")
        return EXIT_OK
    if args.template not in templates:
        raise UsageError(
            f"unknown template {args.template!r}{did_you_mean(args.template, templates)}; "
            f"templates: {', '.join(templates)}"
        )
    text = f"# yaml-language-server: $schema={SCHEMA_FILE}\n" + templates[args.template]
    if not args.output:
        sys.stdout.write(text)
        return EXIT_OK
    if os.path.exists(args.output) and not args.force:
        raise RnncError(f"{args.output} exists; pass --force to overwrite it")
    schema_path = os.path.join(os.path.dirname(os.path.abspath(args.output)), SCHEMA_FILE)
    write_atomic(args.output, text)
    print(f"wrote {args.output}", file=sys.stderr)
    if not os.path.exists(schema_path):
        write_atomic(schema_path, schema_text())
        print(
            f"wrote {schema_path} (the JSON Schema YAML editors complete the spec from)",
            file=sys.stderr,
        )
    return EXIT_OK


# --- cells -----------------------------------------------------------------------------


def run_cells(args: argparse.Namespace) -> int:
    cells: dict[str, Cell] = dict(builtin_cells())
    if args.spec:
        analysis = analyze(load_spec(args.spec))
        cells.update({n: c for n, c in analysis.cells.items() if n in analysis.spec.cells})
    if args.cell is None:
        for name, cell in cells.items():
            params = ", ".join(p.name for p in cell.params)
            print(f"{name:18} state {', '.join(cell.state):6}  params {params}")
        return EXIT_OK
    if args.cell not in cells:
        raise UsageError(
            f"unknown cell {args.cell!r}{did_you_mean(args.cell, cells)}; cells: {', '.join(cells)}"
        )
    cell = cells[args.cell]
    input_size = args.input or 8
    hidden = args.hidden or 16
    print(f"cell {cell.name}: state [{', '.join(cell.state)}], output {cell.output}")
    print("equations (in order; a state means its old value until assigned):")
    width = max(len(eq.target) for eq in cell.equations)
    for eq in cell.equations:
        print(f"  {eq.target.rjust(width)} = {eq.text}")
    print(f"parameters for input size {input_size}, hidden size {hidden}:")
    shapes = cell.param_shapes(input_size, hidden)
    name_width = max(len(n) for n in shapes)
    total = 0
    for name, shape in shapes.items():
        size = 1
        for dim in shape:
            size *= dim
        total += size
        print(f"  {name.ljust(name_width)}  {shape!s:14} {size:>10,}")
    print(f"  total {total:,} per layer and direction")
    problems = cell.check_sizes(input_size, hidden)
    for problem in problems:
        print(f"  does not fit: {problem.equation}: {problem.message}", file=sys.stderr)
    return EXIT_INVALID if problems else EXIT_OK
