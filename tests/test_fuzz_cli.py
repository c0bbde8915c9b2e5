"""A sweep of the command line (hypothesis): every subcommand, arguments from pools.

Each example runs ``rnnc COMMAND ARGS...`` in this process, in a folder of its own
holding gallery specs (and the bench specs the train tasks fit), valid specs whose
numbers overflow, broken specs, a spec of 17 G parameters, a directory, a FIFO, links
to a spec and files with odd suffixes. Arguments are drawn from pools: those files,
missing files, an input as ``-o`` (also through a symlink, a hard link, ``./`` and
``dir/..``), outputs with every suffix (some made FIFOs, read by a thread), existing
files and directories as ``-o``; integers that are negative, zero, NaN, huge or not
numbers at all; unknown choices, unknown flags, ``--help``. Half the lines have no
invalid value, so they run. The slow commands (train, gradflow, verify, bench) start
with small ``--steps`` and ``--batch``, and any value drawn after is small or invalid,
so an example takes a second or less.

Every run:

- exits 0, 1 or 2 (3 is an internal error: a bug), with no traceback and no
  "internal error" in its output;
- leaves every input file as it was;
- writes nothing when it fails (the folder is as it was, byte for byte);
- leaves the file it was asked for with ``-o`` when it succeeds;
- exits 2 (usage) for an integer option outside its range, a learning rate or clip
  that is not a positive finite number, a negative seed, or an ``-o`` whose suffix the
  command cannot write, and for ``init -o FILE`` or ``--force`` without a template
  (there is nothing to write); and does not succeed with ``-o`` naming one of its inputs.

Not in the pools: devices such as ``/dev/null`` (the tests run as root: a command that
renamed a file over one would replace the system's device, as ``-o /dev/null`` once
did; FIFOs in the example's folder stand in for them) and paths outside the folder.

The run is bounded like tests/test_properties.py: ``EXAMPLES`` in all, spread over the
commands, the same ones every run; ``RNNC_HYPOTHESIS_EXAMPLES=N`` runs about N and
explores new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import select
import shutil
import string
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnc.tools.cli import main
from tests.conftest import ROOT
from tests.test_cli import BROKEN
from tests.test_properties import EXPLORE, _settings

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ["RNNC_HYPOTHESIS_EXAMPLES"]) if EXPLORE else 50

# --- the folder of an example ----------------------------------------------------------

SPECS = {  # file name in the folder -> a spec of the repository (small: they get trained)
    "elman.yaml": "specs/elman_rnn.yaml",
    "gru.yaml": "specs/gru_reset_after.yaml",
    "slide.yaml": "specs/lstm_slide_notation.yaml",  # a user cell
    "tf.yaml": "specs/teacher_forcing_rnn.yaml",  # a user cell, feedback
    "s2s.yaml": "specs/seq2seq.yaml",  # an encoder-decoder: copy, reverse, sort
    "caption.yaml": "specs/image_captioning.yaml",  # a one-to-many decoder
    "sum.yaml": "bench/sum_lstm.yaml",  # the other tasks' specs
    "parity.yaml": "bench/parity_gru.yaml",
    "echo.yaml": "bench/echo_lstm.yaml",
    "spec.txt": "specs/elman_rnn.yaml",  # a spec is a spec whatever its name
    "my spec": "specs/coupled_gate_lstm.yaml",
}
HUGE = """\
rnnc: 1
name: huge
inputs:
  x: {size: 16}
layers:
  r: {cell: lstm, hidden: 65536, input: x}
outputs:
  y: {from: r}
"""
# Valid, but its numbers overflow: outputs, gradients and trained weights are not finite.
WILD = string.Template("""\
rnnc: 1
name: wild
cells:
  wild:
    state: [h, c]
    equations:
      a: 1e300 * sigmoid(W @ [x, h] + b)
      c: a * c + relu(V @ x)
      h: softsign(c) - 0.5 * hard_sigmoid(c)
inputs:
  x: $x
layers:
  r: {cell: wild, hidden: 4, input: x}
  out: $out
outputs:
  $outputs
""")
WILD_SPECS = {  # for the sum and echo tasks
    "wild_sum.yaml": WILD.substitute(
        x="{size: 1}", out="{dense: 1, input: r}", outputs="total: {from: out, steps: last}"
    ),
    "wild_echo.yaml": WILD.substitute(
        x="{vocab: 13, embed: 4}",
        out="{dense: 13, input: r, activation: log_softmax}",
        outputs="echo: {from: out}\n  state_c: {from: r, state: c}",
    ),
}
OTHER_FILES: dict[str, bytes] = {
    **{name: text.encode() for name, text in WILD_SPECS.items()},
    "huge.yaml": HUGE.encode(),  # 17 G parameters: checks, never fits in memory
    "broken.yaml": BROKEN.encode(),  # an unknown name
    "invalid.yaml": b"rnnc: 1\nlayers: [\n",  # not YAML
    "empty.yaml": b"",
    "binary.yaml": bytes(range(256)),
    "existing.svg": b"<svg/>",  # an output that exists already
}
LINK = "link.yaml"  # a symlink to elman.yaml
HARD_LINK = "hard.yaml"  # a hard link to elman.yaml
FIFO = "fifo"  # a FIFO as an input (refused unread)
DIRECTORY = "dir"


def make_folder(folder: Path) -> None:
    for name, source in SPECS.items():
        shutil.copyfile(ROOT / source, folder / name)
    for name, data in OTHER_FILES.items():
        (folder / name).write_bytes(data)
    (folder / LINK).symlink_to("elman.yaml")
    os.link(folder / "elman.yaml", folder / HARD_LINK)
    os.mkfifo(folder / FIFO)
    (folder / DIRECTORY).mkdir()


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a hash of each regular file, what each link points
    to, 'fifo' and 'dir' (a FIFO is never read: that would block)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            out[name] = f"link to {os.readlink(path)}"
        elif path.is_fifo():
            out[name] = "fifo"
        elif path.is_dir():
            out[name] = "dir"
        else:
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def drained(fifos: list[Path]) -> Iterator[None]:
    """Hold every FIFO open for reading, and read what is written to it, so a command
    writing into one never blocks (opened non-blocking: no writer is needed)."""
    fds = [os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in fifos]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(fds, [], [], 0.05)
            if not any([os.read(fd, 1 << 16) for fd in ready]):
                time.sleep(0.01)  # no writer: every read is an end of file at once

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for fd in fds:
            os.close(fd)


# --- pools: (valid, invalid); a value is drawn from the invalid ones one time in six ------

Pool = tuple[tuple[str, ...], tuple[str, ...]]  # (valid values, invalid values)

BAD_SPECS = ("huge.yaml", "broken.yaml", "invalid.yaml", "empty.yaml", "binary.yaml")
SPEC_POOL = (
    (*SPECS, *WILD_SPECS),
    (*BAD_SPECS, LINK, "missing.yaml", DIRECTORY, f"{DIRECTORY}/", FIFO, "", "-", "./elman.yaml"),
)
OUTPUT_SUFFIXES = (
    *(".svg", ".png", ".pdf", ".dot", ".py", ".json", ".yaml", ".safetensors", ".npz"),
    *(".csv", ".txt", "", ".PNG", ".png.csv", ".tar.gz"),
)
OUTPUT_FOLDERS = ("", "", "", f"{DIRECTORY}/", "nowhere/", "./")

BAD_INTEGERS = ("0", "-1", "-5", "nan", "inf", "1.5", "1e3", "1000001", "9" * 30, "", "abc")
INTEGERS = (("1", "2", "3", "10", "1000000", " 4", "+2"), BAD_INTEGERS)
SMALL_INTEGERS = (("1", "2", "3"), BAD_INTEGERS)  # the slow commands'
SEEDS = (("0", "1", "42", "4294967296", str(2**63 - 1)), (str(2**63), "-1", "-7", "nan", "x"))
REALS = (("0.003", "1", "0.5", "1e-9", "1e308"), ("0", "-1", "nan", "inf", "-inf", "NaN", "x", ""))


@dataclass
class Line:
    """A command line and what it must do."""

    command: str
    # NOTE: how often an option is given or a value is invalid is left to a Random
    # seeded by Hypothesis: Hypothesis's own booleans and small integers lean to one
    # side, and then most lines are refused before they run.
    chance: random.Random = field(repr=False)
    # How often a value is invalid: never in half of the lines, to have lines that run.
    invalid: float = 0.0
    args: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # spec files it reads
    output: str | None = None
    fifo_output: bool = False  # make the -o path a FIFO first
    usage_error: str | None = None  # why it must exit 2
    stray: bool = False  # a stray argument was put in: what the rest means may change

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]

    def maybe(self) -> bool:
        return self.chance.random() < 0.5

    def pick(self, draw: Any, pool: Pool) -> tuple[str, bool]:
        """A value from a (valid, invalid) pool, and whether it is valid."""
        valid, invalid = pool
        if invalid and self.chance.random() < self.invalid:
            return draw(st.sampled_from(invalid)), False
        return draw(st.sampled_from(valid)), True

    def option(self, draw: Any, flag: str, pool: Pool) -> None:
        """``flag VALUE``; an invalid value is a usage error."""
        value, ok = self.pick(draw, pool)
        self.args += [flag, value]
        if not ok:
            self.refuse(f"{flag} {value!r}")

    def specs(self, draw: Any, low: int, high: int) -> None:
        for _ in range(self.chance.randint(low, high)):
            spec, _ = self.pick(draw, SPEC_POOL)
            self.args.append(spec)
            self.inputs += [spec] if spec else []

    def output_to(self, draw: Any, suffixes: tuple[str, ...] | None) -> None:
        """An -o: a new file (maybe a FIFO), an existing one, a directory, or an input;
        ``suffixes``: the ones the command writes (others are a usage error)."""
        kind = draw(st.sampled_from(["new", "new", "new", "new", "existing", "folder", "input"]))
        if kind == "input" and self.inputs:
            first = self.inputs[0]  # the same file under other names
            spellings = [f"./{first}", f"{DIRECTORY}/../{first}", LINK, HARD_LINK]
            path = draw(st.sampled_from([*self.inputs, *spellings]))
        elif kind == "existing":
            path = draw(st.sampled_from(["existing.svg", "elman.yaml", "spec.txt", FIFO]))
        elif kind == "folder":
            path = draw(st.sampled_from([DIRECTORY, f"{DIRECTORY}/", "."]))
        else:
            folder = draw(st.sampled_from(OUTPUT_FOLDERS))
            good = [x for x in OUTPUT_SUFFIXES if suffixes is None or x.endswith(suffixes)]
            suffix, _ = self.pick(draw, (tuple(good), OUTPUT_SUFFIXES))
            path = f"{folder}out{suffix}"
            self.fifo_output = folder == "" and self.chance.random() < 0.25
        self.output = path
        self.args += [draw(st.sampled_from(["-o", "--output"])), path]
        if suffixes is not None and not path.endswith(suffixes):
            self.refuse(f"-o {path}")

    def refuse(self, why: str) -> None:
        self.usage_error = self.usage_error or why


def new_line(draw: Any, command: str, *args: str) -> Line:
    chance = random.Random(draw(st.integers(0, 2**32 - 1)))
    return Line(command, chance, chance.choice([0.0, 0.0, 0.1, 0.3]), list(args))


# --- one strategy per command ------------------------------------------------------------


@st.composite
def check_lines(draw: Any) -> Line:
    line = new_line(draw, "check")
    line.specs(draw, 1, 3)
    for flag in ("--batch", "--steps"):
        if line.maybe():
            line.option(draw, flag, INTEGERS)
    return line


@st.composite
def cells_lines(draw: Any) -> Line:
    line = new_line(draw, "cells")
    if line.maybe():
        cell, ok = line.pick(
            draw, (("lstm", "gru", "rnn_relu", "slide_lstm", "output_recurrent"), ("nope", "LSTM"))
        )
        line.args.append(cell)
        spec = {"slide_lstm": "slide.yaml", "output_recurrent": "tf.yaml"}.get(cell)
        if spec is not None:  # a spec's own cell, with --spec naming it
            line.args += ["--spec", spec]
            line.inputs.append(spec)
        if not ok:
            line.refuse(f"cell {cell!r}")
    for flag in ("--input", "--hidden"):
        if line.maybe():
            line.option(draw, flag, INTEGERS)
    if "--spec" not in line.args and line.maybe():
        spec, _ = line.pick(draw, SPEC_POOL)
        line.args += ["--spec", spec]
        line.inputs += [spec] if spec else []
    return line


RENDER_FORMATS = ("svg", "png", "pdf", "dot")


@st.composite
def render_lines(draw: Any) -> Line:
    line = new_line(draw, "render")
    line.specs(draw, 0 if line.chance.random() < 0.2 else 1, 1)
    fmt = None
    if line.maybe():
        line.option(draw, "--format", (RENDER_FORMATS, ("jpg", "SVG", "")))
        fmt = line.args[-1]
    if line.maybe():
        line.option(draw, "--view", (("rolled", "unrolled", "cell"), ("folded", "")))
    if line.maybe():
        line.args += ["--cell", line.pick(draw, (("lstm", "gru", "slide_lstm"), ("nope",)))[0]]
    if line.maybe():
        line.option(draw, "--steps", INTEGERS)
    if line.maybe():
        line.option(draw, "--attention", (("auto", "each", "bundled"), ("all",)))
    if line.maybe():
        # The suffix of the file's name picks the format unless --format does; no
        # suffix is DOT.
        line.output_to(draw, None)
        name = (line.output or "").rsplit("/", 1)[-1]
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else "dot"
        if fmt is None and suffix not in RENDER_FORMATS:
            line.refuse(f"-o {line.output}")
    return line


GALLERY_NAMES = tuple(sorted(p.stem for p in (ROOT / "specs").glob("*.yaml")))


@st.composite
def init_lines(draw: Any) -> Line:
    line = new_line(draw, "init")
    if line.maybe():
        templates = (GALLERY_NAMES, ("nope", "", "../specs/elman_rnn", "elman_rnn.yaml"))
        template, ok = line.pick(draw, templates)
        line.args.append(template)
        if not ok:
            line.refuse(f"template {template!r}")
    listing = not line.args  # no TEMPLATE: the gallery is listed, -o and --force do nothing
    if line.maybe():
        line.output_to(draw, None)
    if line.maybe():
        line.args.append("--force")
    if listing and line.args:
        line.refuse("init -o or --force without a TEMPLATE")
    return line


@st.composite
def schema_lines(draw: Any) -> Line:
    line = new_line(draw, "schema")
    if line.maybe():
        line.output_to(draw, None)
    return line


@st.composite
def compile_lines(draw: Any) -> Line:
    line = new_line(draw, "compile")
    line.specs(draw, 1, 1)
    if line.maybe():
        backend, ok = line.pick(draw, (("numpy", "torch"), ("jax", "", "NumPy")))
        line.args += ["--backend", backend]
        if not ok:
            line.refuse("--backend")
    if line.maybe():
        line.option(draw, "--dtype", (("float32", "float64"), ("float16",)))
    if line.maybe():
        line.output_to(draw, None)
    return line


# The slow commands start with small sizes; a value drawn later overrides them, and is
# small or invalid (refused before anything runs).
TASK_SPECS = {
    "copy": ("s2s.yaml",),
    "reverse": ("s2s.yaml",),
    "sort": ("s2s.yaml",),
    "sum": ("sum.yaml", "wild_sum.yaml"),
    "parity": ("parity.yaml",),
    "echo": ("echo.yaml", "wild_echo.yaml"),
}


@st.composite
def train_lines(draw: Any) -> Line:
    line = new_line(
        draw, "train", "--steps", "2", "--batch", "2", "--lengths", "2-4", "--vocab", "4"
    )
    task, ok = line.pick(draw, (tuple(TASK_SPECS), ("nope", "", "Copy")))
    line.args += ["--task", task]
    if not ok:
        line.refuse("--task")
    if ok and line.chance.random() < 0.75:
        spec = draw(st.sampled_from(TASK_SPECS[task]))  # a spec the task fits, mostly
        line.args.append(spec)
        line.inputs.append(spec)
    else:
        line.specs(draw, 1, 1)
    if line.maybe():
        backend, ok = line.pick(draw, (("torch", "numpy"), ("nope",)))
        line.args += ["--backend", backend]
        if not ok:
            line.refuse("--backend")
    for flag in ("--steps", "--batch", "--vocab"):
        if line.maybe():
            line.option(draw, flag, SMALL_INTEGERS)
    for flag in ("--lr", "--clip"):
        if line.maybe():
            line.option(draw, flag, REALS)
    if line.maybe():
        line.option(draw, "--seed", SEEDS)
    if line.maybe():
        lengths, ok = line.pick(draw, (("1-3", "3-3", "2-5"), ("4-2", "0-2", "a-b", "3", "")))
        line.args += ["--lengths", lengths]
        if not ok:
            line.refuse("--lengths")
    if line.maybe():
        line.args.append("--quiet")
    if line.maybe():
        line.output_to(draw, (".safetensors", ".npz"))
    return line


@st.composite
def gradflow_lines(draw: Any) -> Line:
    line = new_line(draw, "gradflow", "--steps", "3", "--batch", "2")
    line.specs(draw, 1, 1)
    line.output_to(draw, (".png", ".csv"))
    for flag in ("--steps", "--batch"):
        if line.maybe():
            line.option(draw, flag, SMALL_INTEGERS)
    if line.maybe():
        line.option(draw, "--seed", SEEDS)
    return line


@st.composite
def verify_lines(draw: Any) -> Line:
    line = new_line(draw, "verify", "--batch", "2", "--steps", "2")
    line.specs(draw, 1, 2)
    if line.maybe():
        backends = (("numpy,torch", "torch,numpy", "numpy, torch"), ("numpy", ",", "numpy,nope"))
        line.option(draw, "--backends", backends)
    if line.maybe():
        line.option(draw, "--dtype", (("float32", "float64"), ("float16",)))
    if line.maybe():
        line.option(draw, "--lengths", (("ragged", "full"), ("some",)))
    if line.maybe():
        line.option(draw, "--mode", (("train", "generate", "both"), ("eval",)))
    for flag in ("--steps", "--batch"):
        if line.maybe():
            line.option(draw, flag, SMALL_INTEGERS)
    if line.maybe():
        line.option(draw, "--seed", SEEDS)
    if line.maybe():
        line.args.append("--quiet")
    return line


@st.composite
def bench_lines(draw: Any) -> Line:
    line = new_line(draw, "bench", "--batch", "2", "--steps", "2", "--repeats", "1")
    line.specs(draw, 1, 1)
    if line.maybe():
        line.option(draw, "--dtype", (("float32", "float64"), ("float16",)))
    for flag in ("--steps", "--batch", "--repeats", "--threads"):
        if line.maybe():
            line.option(draw, flag, SMALL_INTEGERS)
    return line


COMMANDS = {
    "check": check_lines(),
    "cells": cells_lines(),
    "render": render_lines(),
    "init": init_lines(),
    "schema": schema_lines(),
    "compile": compile_lines(),
    "train": train_lines(),
    "gradflow": gradflow_lines(),
    "verify": verify_lines(),
    "bench": bench_lines(),
}
EXTRAS = ("--nope", "-z", "--help", "-h", "--version", "--debug", "--", "--steps", "--quiet")


@st.composite
def command_lines(draw: Any, command: str) -> Line:
    """A command line, sometimes with an unknown flag or another stray argument."""
    line = draw(COMMANDS[command])
    if line.chance.random() < 0.1:
        at = line.chance.randint(0, len(line.args))
        line.args.insert(at, draw(st.sampled_from(EXTRAS)))
        line.stray = True
    return line


# --- running a command line ------------------------------------------------------------


def run(argv: list[str]) -> tuple[int, str]:
    """``rnnc ARGV`` in this process: exit code, and stdout and stderr together."""
    # Streams with a binary buffer: render writes PNG, SVG and PDF to stdout's.
    raw_out, raw_err = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(raw_out, encoding="utf-8", errors="replace")
    err = io.TextIOWrapper(raw_err, encoding="utf-8", errors="replace")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 1
    out.flush()
    err.flush()
    return code, (raw_out.getvalue() + raw_err.getvalue()).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder each example makes its own folder in."""
    return tmp_path_factory.mktemp("cli")


def check_line(workspace: Path, line: Line) -> None:
    """Run one command line in a fresh folder and check what every run must do."""
    folder = Path(tempfile.mkdtemp(dir=workspace))
    make_folder(folder)
    fifos = [folder / FIFO]
    if line.fifo_output and line.output and not (folder / line.output).exists():
        os.mkfifo(folder / line.output)
        fifos.append(folder / line.output)
    inputs = {
        name: (folder / name).read_bytes() for name in line.inputs if (folder / name).is_file()
    }
    before = snapshot(folder)
    with contextlib.chdir(folder), drained(fifos):
        code, output = run(line.argv)
    after = snapshot(folder)
    shown = f"rnnc {' '.join(line.argv)} -> exit {code}\n{output}"

    assert code in (0, 1, 2), shown
    assert "Traceback" not in output, shown
    assert "internal error" not in output, shown
    for name, data in inputs.items():
        assert (folder / name).read_bytes() == data, f"{name} changed: {shown}"
    if code != 0:
        assert after == before, f"a failed run wrote files: {shown}"
    # A stray --help, '--' or flag that takes the next argument changes what the rest
    # of the line means: then only the rules above hold.
    if line.usage_error is not None and not line.stray:
        assert code == 2, f"{line.usage_error} is a usage error: {shown}"
    if line.output is not None and not line.stray:
        clash = any(_same_file(folder / line.output, folder / name) for name in line.inputs)
        assert not (clash and code == 0), f"-o wrote over an input: {shown}"
        if code == 0:
            assert os.path.lexists(folder / line.output), f"no {line.output}: {shown}"
    shutil.rmtree(folder)  # kept when a rule fails, to look at


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


# Each command gets an equal share of the examples (the slow ones run small sizes).
PER_COMMAND = _settings(max(1, EXAMPLES // len(COMMANDS)))


@PER_COMMAND
@pytest.mark.parametrize("command", sorted(COMMANDS))
@given(data=st.data())
def test_command_lines_exit_cleanly(workspace: Path, command: str, data: st.DataObject) -> None:
    check_line(workspace, data.draw(command_lines(command), label="line"))
