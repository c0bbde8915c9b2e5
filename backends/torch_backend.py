"""The PyTorch backend: a checked spec -> a readable Python module importing only torch.

The module defines ``Model``, a plain ``torch.nn.Module`` whose parameters are
registered under rnnc's canonical names (``state_dict()`` keys are exactly the names of
``rnnc.init_params``), and whose ``forward`` takes batch-first tensors. It walks the
same ops as the NumPy backend (rnnc.ir.network), spelled for torch:

- a layer of a built-in ``rnn``, ``rnn_relu``, ``lstm`` or ``gru`` outside a step loop
  runs through PyTorch's fused RNN kernels (``torch.lstm`` and friends, as
  ``torch.nn.LSTM`` does), its weights stacked from the canonical ones on the fly;
- any other cell runs as the generated scan (input projection hoisted, recurrent gate
  products stacked) inside a ``torch.autograd.Function`` whose backward is the
  reverse-mode code rnnc derives from the cell equations (the same text the NumPy
  backend runs, spelled for torch): no autograd over a Python loop;
- step loops (feedback, additive attention) run step by step with autograd.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import rnnc
from rnnc.errors import RnncError
from rnnc.front.checks import Analysis, cell_input_width
from rnnc.front.spec import DenseLayer, RecurrentLayer, TokenInput
from rnnc.ir.lower import CellStep, Op, OpKind
from rnnc.ir.network import Scan, live, lower_network
from rnnc.ir.program import time_axes
from rnnc.runtime.compiled import (
    CompiledModelBase,
    Loss,
    RunOptions,
    check_input_values,
    check_lengths,
    check_tf_mask,
    input_rules,
    load_module,
    module_header,
)
from rnnc.runtime.interop import TORCH_ORDER
from rnnc.runtime.params import param_shapes, require_memory
from rnnc.runtime.weights import init_rules

from . import native
from .emit import TORCH, function_definitions, pack, used_helpers
from .writer import EXPRESSIONS, Expression, ModuleWriter

PRELUDE = (
    """\
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


"""
    + function_definitions(TORCH, {})
    + '''


def softmax(a):
    return torch.softmax(a, dim=-1)


def log_softmax(a):
    return torch.log_softmax(a, dim=-1)


try:
    ONEDNN = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):  # a build without oneDNN
    ONEDNN = None


def onednn(a):
    """Whether a product with a on the left goes through oneDNN (see mm)."""
    return (
        ONEDNN is not None
        and a.dtype == torch.float32
        and a.shape[0] >= 16
        and a.device.type == "cpu"
        and not torch.is_grad_enabled()
    )


def mm(a, b, bias=None):
    """a @ b (+ bias) for 2-d a and b. Outside autograd (the generated scans and their
    backward), a float32 product on the CPU with 16 rows or more goes through oneDNN,
    as torch.nn.LSTM's own kernel does: on some CPUs the BLAS is half as fast. Not when
    b is a block of columns of a matrix (neither b nor b.T contiguous): oneDNN takes a
    hundred times longer on those than the BLAS. b may be packed by recurrent_weight."""
    if b.layout != torch.strided:
        return ONEDNN(a, b, bias, "none", [], "")
    if not onednn(a) or not (b.is_contiguous() or b.T.is_contiguous()):
        return a @ b if bias is None else torch.addmm(bias, a, b)
    return ONEDNN(a, b.T, bias, "none", [], "")


def recurrent_weight(b, like):
    """b for a product at every step with operands like `like`: where mm would use
    oneDNN, b packed once into oneDNN's own layout for that many rows (each product
    then skips the repacking, a fifth of its time at 32 rows)."""
    if not onednn(like):
        return b
    try:
        return torch.ops.mkldnn._reorder_linear_weight(b.T.contiguous(), like.shape[0])
    except (AttributeError, RuntimeError):  # a build without it
        return b


def shift(values, delay):
    """values[t - delay] at step t, zeros before (a recurrent edge across time)."""
    T = values.shape[0]
    zeros = values.new_zeros((min(delay, T),) + tuple(values.shape[1:]))
    return torch.cat([zeros, values[: max(T - delay, 0)]], axis=0)


def dropout_mask(uniform, shape, p, like):
    """Inverted dropout: 0 or 1 / (1 - p) per entry from uniform draws; ones when
    dropout is off (uniform is None)."""
    if uniform is None:
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    return (uniform(shape) >= p).to(like.dtype) / (1 - p)


def step_mask(lengths, steps):
    """(T, B, 1) booleans: true where step t is within the example's length."""
    return (torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :])[:, :, None]


def flip_within(values, lengths):
    """Each example's first lengths[b] steps in reverse order; the steps after stay."""
    T = values.shape[0]
    t = torch.arange(T, device=values.device)[:, None]
    index = torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return values.gather(0, index[:, :, None].expand_as(values))


FUSED = {"rnn": torch.rnn_tanh, "rnn_relu": torch.rnn_relu, "lstm": torch.lstm, "gru": torch.gru}


def fused_scan(kind, xs, lengths, hx, weights, bidirectional):
    """One depth of a built-in cell through PyTorch's fused kernels (as torch.nn.LSTM
    runs them): xs (T, B, X), hx a tuple of (directions, B, H) states. Returns
    ys (T, B, directions * H), zero past each length, and the final states at each
    example's own length; ragged batches go through a PackedSequence."""
    run = FUSED[kind]
    T = xs.shape[0]
    h = hx if kind == "lstm" else hx[0]
    if bool((lengths == T).all()):
        out = run(xs, h, weights, True, 1, 0.0, False, bidirectional, False)
        return out[0], tuple(out[1:])
    packed = pack_padded_sequence(xs, lengths.cpu(), enforce_sorted=False)
    order, back = packed.sorted_indices, packed.unsorted_indices
    h = tuple(s.index_select(1, order) for s in hx) if kind == "lstm" else h.index_select(1, order)
    out = run(packed.data, packed.batch_sizes, h, weights, True, 1, 0.0, False, bidirectional)
    ys, _ = pad_packed_sequence(
        PackedSequence(out[0], packed.batch_sizes, order, back), total_length=T
    )
    return ys, tuple(s.index_select(1, back) for s in out[1:])


def register(root, name, value):
    """Put a parameter (or a Layer) at a dotted canonical name, so state_dict() keys
    are the names, and return the key. Containers are plain Modules unless a Layer was
    put there first; a part that nn.Module keeps as an attribute of its own ('training',
    '_modules', ...), or Model's rnnc_like, gets a trailing '_'."""
    taken = {*vars(torch.nn.Module()), "rnnc_like"}
    path = []
    module = root
    for part in name.split("."):
        while part in taken:
            part += "_"
        path.append(part)
        if len(path) < name.count(".") + 1:
            if part not in module._modules:
                module._modules[part] = torch.nn.Module()
            module = module._modules[part]
    if isinstance(value, torch.nn.Module):
        module._modules[path[-1]] = value
    else:
        module._parameters[path[-1]] = value
    return ".".join(path)


class Layer(torch.nn.Module):
    """The parameters of one layer of the spec (a recurrent one's in containers by
    direction and depth). It prints as one line, what the layer is, as torch.nn.LSTM
    does: the containers inside hold only parameters, which a repr leaves out anyway."""

    def __init__(self, description):
        super().__init__()
        self.description = description

    def extra_repr(self):
        return self.description

    def __repr__(self):
        return f"{self._get_name()}({self.extra_repr()})"


def dtype_kind(dtype):
    """NumPy's one-letter kind ('b', 'i', 'u', 'f', 'c', ...) of a torch or NumPy dtype."""
    if not isinstance(dtype, torch.dtype):
        return dtype.kind
    if dtype == torch.bool:
        return "b"
    if dtype.is_complex:
        return "c"
    if dtype.is_floating_point:
        return "f"
    return "i" if dtype.is_signed else "u"


def checked_inputs(rules, inputs, device):
    """inputs as tensors (token ids as int64), checked as rnnc's run checks them: a
    NumPy array is checked as it is, then converted (on device), never reinterpreted;
    a value without a dtype (a list) becomes a tensor first."""
    inputs = {k: v if hasattr(v, "dtype") else torch.as_tensor(v) for k, v in inputs.items()}
    check_input_values(rules, inputs, {k: dtype_kind(v.dtype) for k, v in inputs.items()})
    tensors = {}
    for name, value in inputs.items():
        tensor = value if torch.is_tensor(value) else torch.as_tensor(value, device=device)
        tensors[name] = tensor.long() if "vocab" in rules[name] else tensor
    return tensors
'''
    # The checks run makes, as text: the module refuses what run refuses in its words.
    + "\n\n\n"
    + "\n\n\n".join(
        inspect.getsource(check).strip()
        for check in (check_input_values, check_lengths, check_tf_mask)
    )
)

FUNCTION = '''


class {fn}_function(torch.autograd.Function):
    """{cell} over time; backward runs {fn}_backward, BPTT generated by rnnc."""

    @staticmethod
    def forward(ctx, xs, mask, reverse, taped, names, *tensors):
        P = dict(zip(names, tensors[: len(names)]))
        ys, final, tape = {fn}(xs, mask, reverse, P, tuple(tensors[len(names) :]))
        ctx.rnnc = (tape, xs, mask, reverse, P, names)
        return (ys, *final)

    @staticmethod
    def backward(ctx, d_ys, *d_final):
        tape, xs, mask, reverse, P, names = ctx.rnnc
        D = {{name: torch.zeros_like(value) for name, value in P.items()}}
        d_xs, d_first = {fn}_backward(d_ys, d_final, tape, xs, mask, reverse, P, D)
        return (d_xs, None, None, None, None, *(D[name] for name in names), *d_first)'''

FUSED_CELLS = tuple(TORCH_ORDER)  # the built-in cells PyTorch has kernels for


# How torch spells what it spells differently from NumPy (backends.writer.EXPRESSIONS).
TORCH_EXPRESSIONS: dict[OpKind, Expression] = {
    **EXPRESSIONS,
    OpKind.INPUT: lambda w, op, a: f"inputs[{op.attr!r}].to(dtype)",
    OpKind.IDS: lambda w, op, a: f"inputs[{op.attr!r}]",
    OpKind.TRUTH: lambda w, op, a: f"tf_masks[{op.attr!r}].T",
    OpKind.DROPMASK: lambda w, op, a: (
        f"dropout_mask(uniform, {a[0]}.shape[:2] + ({op.attr[1]},), {op.attr[0]!r}, like)"
    ),
    OpKind.LAST: lambda w, op, a: (
        f"{a[0]}[lengths[{op.attr!r}] - 1, torch.arange({a[0]}.shape[1], device=device)]"
    ),
    OpKind.MUL: lambda w, op, a: w.multiply(op, a),  # type: ignore[attr-defined]
    OpKind.MAX0: lambda w, op, a: f"{a[0]}.amax(0)",
}


# The torch module's generate: rnnc's strategies over the module's step contract.
GENERATE_METHOD = '''

    def generate(self, inputs, lengths=None, **options):
        """Decode (rnnc's docs/decoding.md): greedy, beam search or sampling over this
        module's step contract, each option (strategy, beam, n_best, max_steps, eos, pad,
        length_penalty, temperature, top_k, top_p, suppress, seed) defaulting to
        GENERATION. Tensors in, a Generation of tensors out; needs rnnc installed."""
        from rnnc.runtime import decoding

        seed = options.pop("seed", None)
        opts = decoding.options(decoding.GenerationOptions.model_validate(GENERATION), options)
        params, inputs, by_axis, _ = self.prepare(inputs, lengths, "generate", None, opts.max_steps)
        batch = len(next(iter(by_axis.values())))
        with torch.no_grad():
            found = decoding.generate(globals(), params, inputs, by_axis, batch, opts, seed)
        return decoding.as_tensors(found, self.rnnc_like.device)'''


class _TorchWriter(ModuleWriter):
    """Writes the generated module's ``run``, the forward pass, from the network's ops:
    torch's autograd differentiates it; a scan is a fused kernel (built-in cells) or
    an autograd Function whose backward is the generated reverse scan."""

    expressions = TORCH_EXPRESSIONS
    products = ("sbx,x->bs", "bs,sbx->bx")  # its batched product of a transposed view is slow

    def __init__(self, analysis: Analysis):
        super().__init__(analysis, lower_network(analysis), TORCH, grads=False)
        self.scanned: set[str] = set()  # cell functions a layer runs as a scan
        self.native: dict[str, tuple[CellStep, native.NativePlan]] = {}  # C steps by function
        self.fused: set[tuple[str, int]] = set()  # (layer, depth) written by a fused call
        scans = [op for op in self.net.ops if op.kind == OpKind.SCAN]
        self.unpacked = {op.args[2] for op in scans if self.is_fused(op.attr)}

    init_setup = (
        "like = next(iter(params.values()))",
        "dtype, device = like.dtype, like.device",
        "uniform = None",
    )
    carry_setup = ("like = carry['like']", "dtype, device = like.dtype, like.device")

    def begin_function(self) -> None:
        self.fused.clear()  # each function makes its own fused calls

    def is_fused(self, scan: Scan) -> bool:
        return self.analysis.spec.layers[scan.layer].cell in FUSED_CELLS  # type: ignore[union-attr]

    def new_buffer(self, width: int | str) -> str:
        return "[None] * T"  # written step by step: a list, stacked after the loop

    def zeros(self, width: int, rows: str = "B") -> str:
        return f"torch.zeros(({rows}, {width}), dtype=dtype, device=device)"

    def multiply(self, op: Op, a: list[str]) -> str:
        """a * b; an output's step mask is left out where the steps past each length
        are zero already."""
        if isinstance(op.attr, tuple) and op.attr[0] == "output" and self.zero_past(op.attr[1]):
            return a[0]
        return f"{a[0]} * {a[1]}"

    def zero_past(self, node: str) -> bool:
        """Whether a node's steps past each example's length are zero already: those of
        a recurrent layer are (fused kernels and scans alike) unless attention or a
        residual connection adds to them afterwards."""
        layer = self.analysis.spec.layers.get(node)
        loop = any(op.kind == OpKind.LOOP and node in dict(op.attr.writes) for op in self.net.ops)
        return (
            isinstance(layer, RecurrentLayer)
            and layer.attention is None
            and not (layer.residual and layer.depth > 1)
            and not loop
        )

    def pack(self, op: Op, a: list[str]) -> list[str]:
        if op.out in self.unpacked:
            return []  # a fused kernel takes the canonical parameters themselves
        return [
            f"{self.name(op.out)} = {self.function(op.attr)}_params(params, {op.attr.prefix!r})"
        ]

    def scan(self, op: Op, a: list[str]) -> list[str]:
        """One depth and direction of a recurrent layer; a built-in cell runs both
        directions of a depth in one fused call."""
        xs, mask, P, *starts = a
        scan: Scan = op.attr
        if self.is_fused(scan):
            return self.fused_scan(scan, xs, starts)
        fn = self.function(scan)
        self.scanned.add(fn)
        out = self.local(f"{op.out}:out")
        return [
            f"{out} = {fn}_function.apply({xs}, {mask}, {scan.direction == 'bwd'}, "
            f"torch.is_grad_enabled(), tuple({P}), *{P}.values(), {', '.join(starts)})",
            f"{self.name(op.out)} = ({out}[0], {out}[1:], None)",
        ]

    def fused_scan(self, scan: Scan, xs: str, starts: list[str]) -> list[str]:
        """Every direction of one depth of a built-in cell, through fused_scan."""
        layer: Any = self.analysis.spec.layers[scan.layer]
        if (scan.layer, scan.depth) in self.fused:
            return []  # written with the other direction
        axis = self.analysis.graph.nodes[scan.layer]["axis"]
        H, X = layer.hidden, scan.input_size
        weights = []
        for d in layer.directions:
            weights += self.torch_weights(layer.cell, f"{scan.layer}.{d}.l{scan.depth}.", X, H)
        D = len(layer.directions)
        hx = pack([f"{s}.expand({D}, -1, -1).contiguous()" for s in starts])
        lengths = f"lengths[{axis!r}]"
        if layer.directions == ("bwd",):  # a backward layer alone: the forward kernel on
            xs = f"flip_within({xs}, {lengths})"  # each example's steps reversed
        lines = [
            f"weights = [{', '.join(weights)}]",
            f"ys, finals = fused_scan({layer.cell!r}, {xs}, {lengths}, {hx}, weights, {D == 2})",
        ]
        if layer.directions == ("bwd",):
            lines.append(f"ys = flip_within(ys, {lengths})")
        for i, d in enumerate(layer.directions):
            part = "ys" if D == 1 else f"ys[..., {i * H}:{(i + 1) * H}]"
            var = self.name(f"{scan.layer}.{d}.l{scan.depth}:scan")
            lines.append(f"{var} = ({part}, tuple(s[{i}] for s in finals), None)")
        self.fused.add((scan.layer, scan.depth))
        return lines

    @staticmethod
    def torch_weights(cell: str, p: str, X: int, H: int) -> list[str]:
        """w_ih, w_hh, b_ih, b_hh in PyTorch's gate order, from canonical names."""
        order = TORCH_ORDER[cell]
        w_ih, w_hh, b_ih, b_hh = [], [], [], []
        for gate in order:
            if gate is None:  # gru's candidate keeps its two sides apart
                w_ih.append(f"params[{p + 'W_in'!r}]")
                w_hh.append(f"params[{p + 'W_hn'!r}]")
                b_ih.append(f"params[{p + 'b_in'!r}]")
                b_hh.append(f"params[{p + 'b_hn'!r}]")
                continue
            w_ih.append(f"params[{p + gate!r}][:, :{X}]")
            w_hh.append(f"params[{p + gate!r}][:, {X}:]")
            b_ih.append(f"params[{p + 'b' + gate[1:]!r}]")
        zeros = (len(order) - len(b_hh)) * H
        b_hh.insert(0, f"params[{p + 'b' + order[0][1:]!r}].new_zeros({zeros})")  # type: ignore[index]
        return [f"torch.cat([{', '.join(w)}])" for w in (w_ih, w_hh, b_ih, b_hh)]

    def scan_function(self, fn: str, step: CellStep) -> str:
        """The autograd Function running a cell family's scan: through the cell's C
        steps where it fits (backends.native), else the Python scan."""
        found = native.plan(step)
        if found is None:
            return FUNCTION.format(fn=fn, cell=step.cell.name)
        self.native[fn] = (step, found)
        scan = native.emit_torch_scan(step, found, fn)
        return "\n\n\n" + scan + native.NATIVE_FUNCTION.format(fn=fn, cell=step.cell.name)

    def run_function(self) -> str:
        self.begin_function()
        lines = [
            "def run(params, inputs, lengths, tf_masks, uniform, like):",
            '    """The forward pass. inputs: batch-first tensors; lengths: (B,) per sequence\n'
            "    input; tf_masks: (B, T) booleans per time axis with feedback (true: read the\n"
            "    ground truth); uniform: None (no dropout) or shape -> uniform [0, 1) tensor.\n"
            "    like: a tensor of the model's dtype and device. Returns the outputs,\n"
            '    batch-first."""',
            "    dtype, device = like.dtype, like.device",
            "    outputs = {}",
            *self.lines(live(self.net.ops), "    "),
            "    return outputs",
        ]
        return "\n".join(lines)

    @property
    def spec(self) -> Any:
        return self.analysis.spec

    def model_class(self) -> str:
        rules = init_rules(self.analysis)
        axes, fed_axes, truths = time_axes(self.analysis)
        shapes = {name: shape for name, (shape, _) in rules.items()}
        inits = {name: rule for name, (_, rule) in rules.items()}
        layers = self.layer_descriptions(shapes)
        generate = GENERATE_METHOD if self.net.step is not None else ""
        decoding = (
            f"GENERATION = {self.spec.generation.model_dump()!r}  # generate's defaults\n"
            if generate
            else ""
        )
        return f'''PARAM_SHAPES = {shapes!r}
INIT = {inits!r}  # (kind, value): N(0, 1), U(-value, value) or a constant
INPUTS = {input_rules(self.analysis)!r}  # what forward checks (token vocab or vector size)
LAYERS = {layers!r}  # what print(model) says of each
SEQUENCES = {tuple(axes)!r}  # sequence inputs that start a time axis
FEEDBACK = {fed_axes!r}  # time axis -> teacher-forcing probability
TRUTHS = {tuple(truths)!r}  # inputs whose later steps feedback replaces
{decoding}

class Model(torch.nn.Module):
    """{self.spec.name}: parameters under rnnc's canonical names; see forward."""

    def __init__(self, dtype=torch.float32, device=None):
        super().__init__()
        self.canonical = {{}}  # state_dict key -> rnnc's name (the same but for clashes)
        for name, description in LAYERS.items():
            register(self, name, Layer(description))
        for name, shape in PARAM_SHAPES.items():
            empty = torch.empty(shape, dtype=dtype, device=device)
            self.canonical[register(self, name, torch.nn.Parameter(empty))] = name
        # The dtype and device (moved by .to() like the parameters), for a model that
        # has none; not part of the state dict.
        like = torch.empty(0, dtype=dtype, device=device)
        self.register_buffer("rnnc_like", like, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        """rnnc's initialisation (rnnc.init_params), drawn from torch's generator."""
        with torch.no_grad():
            for key, p in self.named_parameters():
                kind, value = INIT[self.canonical[key]]
                if kind == "normal":
                    p.normal_()
                elif kind == "uniform":
                    p.uniform_(-value, value)
                else:
                    p.fill_(value)

    def forward(self, inputs, lengths=None, mode="train", tf_mask=None, steps=None, uniform=None):
        """Outputs (a dict of batch-first tensors) for inputs (a dict of batch-first
        tensors: (B, T, size) reals or (B, T) token ids; NumPy arrays are converted),
        checked as rnnc's run checks them (ValueError, TypeError for dtypes alone).

        lengths: (B,) for a spec with one sequence input, else a dict by input (default:
        full length). mode="train": a layer with feedback reads the ground truth where
        tf_mask (B, T) is true, else its own previous prediction (default: drawn with
        the spec's teacher_forcing probability while training, the ground truth at
        every step in eval mode); dropout while training. mode="generate": free running
        for `steps` steps from the first ground-truth step. uniform: shape -> uniform
        [0, 1) tensor for dropout masks (default torch.rand while training, none in
        eval mode); when given, it is used in either mode.
        """
        params, inputs, by_axis, tf_masks = self.prepare(inputs, lengths, mode, tf_mask, steps)
        like = self.rnnc_like
        if mode != "train":
            uniform = None
        elif uniform is None and self.training:
            uniform = lambda shape: torch.rand(shape, dtype=like.dtype, device=like.device)  # noqa: E731
        return run(params, inputs, by_axis, tf_masks, uniform, like)

    def prepare(self, inputs, lengths, mode, tf_mask, steps):
        """What run takes: the parameters by canonical name, the inputs checked (and for
        mode="generate" the fed inputs padded to `steps`), lengths and teacher-forcing
        masks by time axis (see forward)."""
        params = {{self.canonical[key]: p for key, p in self.named_parameters()}}
        device = self.rnnc_like.device
        inputs = checked_inputs(INPUTS, inputs, device)
        if mode not in ("train", "generate"):
            raise ValueError(f"mode must be 'train' or 'generate', found {{mode!r}}")
        if mode == "generate":
            if not FEEDBACK or steps is None or steps < 1:
                raise ValueError("mode='generate' needs a layer with feedback and steps >= 1")
            for name in TRUTHS:
                first = inputs[name][:, :1]
                pad = first.new_zeros((first.shape[0], steps - 1) + tuple(first.shape[2:]))
                inputs[name] = torch.cat([first, pad], axis=1)
        by_axis = {{}}
        for axis in SEQUENCES:
            batch, total = inputs[axis].shape[:2]
            given = lengths.get(axis) if isinstance(lengths, dict) else lengths
            if given is None or (mode == "generate" and axis in FEEDBACK):
                given = torch.full((batch,), total)
            by_axis[axis] = torch.as_tensor(given, device=device).long()
            check_lengths(axis, by_axis[axis], batch, total)
        tf_masks = {{}}
        for axis, p in FEEDBACK.items():
            batch, total = inputs[axis].shape[:2]
            if mode == "generate":
                mask = torch.zeros((batch, total), dtype=torch.bool, device=device)
                mask[:, 0] = True
            elif tf_mask is not None:
                mask = tf_mask.get(axis) if isinstance(tf_mask, dict) else tf_mask
                mask = torch.as_tensor(mask, device=device).bool()
                check_tf_mask(axis, mask, batch, total)
            elif not self.training:  # eval mode: deterministic, the ground truth
                mask = torch.ones((batch, total), dtype=torch.bool, device=device)
            else:
                mask = torch.rand((batch, total), device=device) < p
            tf_masks[axis] = mask
        return params, inputs, by_axis, tf_masks{generate}'''

    def layer_descriptions(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
        """What print(model) says of each embedded input and each layer: its kind and
        sizes, torch.nn.LSTM's way, then what it reads. In the order of the parameters,
        so that the state dict keeps its order."""
        said = {
            name: f"embedding({inp.vocab}, {inp.embed})"
            for name, inp in self.spec.inputs.items()
            if isinstance(inp, TokenInput) and inp.embed is not None
        }
        for name, layer in self.spec.layers.items():
            s = "s" if len(layer.inputs) > 1 else ""
            parts = [self.layer_kind(name, layer, shapes), f"input{s} {', '.join(layer.inputs)}"]
            links = layer.links() if isinstance(layer, RecurrentLayer) else []
            said[name] = ", ".join(parts + links)
        first = dict.fromkeys(name.split(".")[0] for name in shapes)
        order = [name for name in first if name in said] + [n for n in said if n not in first]
        return {name: said[name] for name in order}

    def layer_kind(self, name: str, layer: Any, shapes: Mapping[str, tuple[int, ...]]) -> str:
        """lstm(32, 64, forward, depth=2, ...), dense(64, 40) or embedding(40, 32): the
        kind, the sizes in and out, the options."""
        if isinstance(layer, DenseLayer):
            activation = "" if layer.activation == "identity" else f", {layer.activation}"
            return f"dense({shapes[name + '.W'][1]}, {layer.dense}{activation})"
        if not isinstance(layer, RecurrentLayer):  # an embedding layer
            return f"embedding({shapes[name + '.embedding'][0]}, {layer.embedding})"
        options = [layer.direction, f"depth={layer.depth}"]
        if layer.direction == "bidirectional" and layer.merge != "concat":
            options.append(f"merge={layer.merge}")
        if layer.residual:
            options.append("residual")
        if layer.dropout:
            options.append(f"dropout={layer.dropout:g}")
        width = cell_input_width(self.analysis.graph, name)
        return f"{layer.cell}({width}, {layer.hidden}, {', '.join(options)})"

    def module(self, header: str) -> str:
        run = self.run_function()
        contract = self.step_contract()
        families = [
            source + (self.scan_function(fn, self.cells.steps[fn]) if fn in self.scanned else "")
            for fn, source in self.cells.sources.items()
        ]
        body = [*families, run, *([contract] if contract else []), self.model_class()]
        if self.native:  # the C steps: compiled and loaded on first use
            body.append(native.source_block(self.native).rstrip())
        prelude = used_helpers(PRELUDE.rstrip(), "\n".join(body))
        if self.native:
            prelude = native.IMPORTS + prelude + native.LOADER.rstrip()
        return "\n\n\n".join([header, prelude, *body]) + "\n"


_TorchWriter.statements = {
    OpKind.PACK: _TorchWriter.pack,  # type: ignore[dict-item]
    OpKind.SCAN: _TorchWriter.scan,  # type: ignore[dict-item]
    OpKind.CELL_STEP: ModuleWriter.cell_step,
    OpKind.OUTPUT: ModuleWriter.output,
    OpKind.LOOP: ModuleWriter.loop,
}


def generate(analysis: Analysis) -> str:
    """The source of a standalone PyTorch module for a checked spec."""
    return _TorchWriter(analysis).module(module_header(analysis, "PyTorch", "torch"))


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise RnncError("the torch backend needs PyTorch: pip install 'rnnc[torch]'") from None
    return torch


class TorchModel(CompiledModelBase):
    """A compiled model on the PyTorch backend (the CompiledModel interface); its
    ``module`` is the generated ``torch.nn.Module``."""

    backend = "torch"

    def __init__(self, analysis: Analysis, dtype: str = "float32", device: str = "cpu"):
        torch = self.torch = _torch()
        self.analysis = analysis
        self.dtype = np.dtype(dtype)
        self.device = torch.device(device)
        self.source = generate(analysis)
        self._shapes = param_shapes(analysis)
        self.namespace = load_module(self.source, analysis, "torch")

    @functools.cached_property
    def module(self) -> Any:
        """The generated ``torch.nn.Module``, built on first use with the parameters of
        rnnc.init_params(seed=0), so compiling allocates none."""
        require_memory(self._shapes, 8 + self.dtype.itemsize)  # drawn, then copied in
        torch = self.torch
        module = self.namespace["Model"](dtype=getattr(torch, str(self.dtype)), device=self.device)
        module.eval()  # dropout only when run/vjp get a dropout_seed
        self._copy_in(module, rnnc.init_params(self.analysis, seed=0))
        return module

    def load_params(self, params: Mapping[str, np.ndarray]) -> None:
        self._copy_in(self.module, params)

    def _copy_in(self, module: Any, params: Mapping[str, np.ndarray]) -> None:
        checked = rnnc.check_params(params, self._shapes, dtype=self.dtype)
        torch = self.torch
        with torch.no_grad():
            for key, p in module.named_parameters():
                value = np.asarray(checked[module.canonical[key]], dtype=self.dtype)
                p.copy_(torch.as_tensor(value))

    def params(self) -> dict[str, np.ndarray]:
        return {
            self.module.canonical[key]: p.detach().cpu().numpy().copy()
            for key, p in self.module.named_parameters()
        }

    def _outputs(self, inputs: Mapping[str, Any], options: RunOptions) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            outputs, _ = self._forward(inputs, options)
        return {k: v.detach().cpu().numpy() for k, v in outputs.items()}

    def _value_and_grad(
        self, inputs: Mapping[str, Any], loss: Loss, options: RunOptions
    ) -> tuple[float, dict[str, np.ndarray]]:
        torch = self.torch
        outputs, tensors = self._forward(inputs, options, grad=True)
        value, cotangents = loss({k: v.detach().cpu().numpy() for k, v in outputs.items()})
        total = sum(
            (
                outputs[k]
                * torch.as_tensor(np.asarray(c), dtype=outputs[k].dtype, device=self.device)
            ).sum()
            for k, c in cotangents.items()
        )
        named = {self.module.canonical[k]: p for k, p in self.module.named_parameters()}
        wrt = {**named, **{k: t for k, t in tensors.items() if t.requires_grad}}
        grads = (
            torch.autograd.grad(total, list(wrt.values()), allow_unused=True)
            if torch.is_tensor(total) and total.requires_grad
            else [None] * len(wrt)
        )
        return value, {
            name: (torch.zeros_like(p) if grad is None else grad).detach().cpu().numpy()
            for (name, p), grad in zip(wrt.items(), grads, strict=True)
        }

    def _contract_arguments(
        self, inputs: dict[str, Any], lengths: dict[str, np.ndarray]
    ) -> tuple[Any, Any, Any]:
        torch = self.torch
        params = {self.module.canonical[k]: p.detach() for k, p in self.module.named_parameters()}
        tensors = self._tensors(inputs, grad=False)
        return (
            params,
            tensors,
            {k: torch.as_tensor(v, device=self.device) for k, v in lengths.items()},
        )

    def _tensors(self, inputs: Mapping[str, Any], grad: bool) -> dict[str, Any]:
        """Prepared inputs as tensors: token ids int64, reals in the model's dtype
        (requiring grad when ``grad``)."""
        torch = self.torch
        tensors = {}
        for name, value in inputs.items():
            if isinstance(self.analysis.spec.inputs[name], TokenInput):
                tensors[name] = torch.as_tensor(value, dtype=torch.int64, device=self.device)
            else:
                t = torch.as_tensor(np.asarray(value, dtype=self.dtype), device=self.device)
                tensors[name] = t.requires_grad_(grad)
        return tensors

    def _forward(
        self, inputs: Mapping[str, Any], options: RunOptions, grad: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The module on the prepared inputs: its outputs, and the input tensors (real
        ones requiring grad when ``grad``)."""
        torch = self.torch
        inputs_, lengths_, masks = options.prepare(self.analysis, inputs)
        tensors = self._tensors(inputs_, grad)
        uniform = None
        if options.mode == "train" and options.dropout_seed is not None:
            rng = np.random.default_rng(options.dropout_seed)

            def uniform(shape: Any) -> Any:
                draw = rng.random(tuple(int(n) for n in shape)).astype(self.dtype)
                return torch.as_tensor(draw, device=self.device)

        outputs = self.module(
            tensors,
            lengths={k: torch.as_tensor(v) for k, v in lengths_.items()},
            mode=options.mode,
            tf_mask={k: torch.as_tensor(m) for k, m in masks.items()},
            steps=options.steps,
            uniform=uniform,
        )
        return outputs, tensors


class TorchBackend:
    """The entry point ``rnnc.backends: torch``; it also times PyTorch's own layers for
    ``rnnc bench`` (rnnc itself never imports torch)."""

    name = "torch"

    @staticmethod
    def ready() -> bool:
        """Whether PyTorch is installed (``pip install 'rnnc[torch]'``)."""
        return importlib.util.find_spec("torch") is not None

    @contextlib.contextmanager
    def threads(self, n: int) -> Iterator[None]:
        """PyTorch's intra-op thread count set to ``n`` for the duration."""
        torch = _torch()
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def reference_layer(
        self, kind: str, layer: RecurrentLayer, size: int, x: np.ndarray, dtype: str
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """Forward and forward+backward of ``torch.nn.<kind>`` (RNN, LSTM, GRU) shaped
        like ``layer``, on the batch-first input ``x``: what rnnc bench times."""
        torch = _torch()
        options: dict[str, Any] = {"nonlinearity": "relu"} if layer.cell == "rnn_relu" else {}
        module = getattr(torch.nn, kind)(
            size,
            layer.hidden,
            num_layers=layer.depth,
            bidirectional=layer.direction == "bidirectional",
            batch_first=True,
            **options,
        ).to(getattr(torch, dtype))
        tensor = torch.from_numpy(x)

        def forward() -> None:
            with torch.no_grad():
                module(tensor)

        def both() -> None:
            leaf = tensor.clone().requires_grad_(True)
            out, _ = module(leaf)
            out.sum().backward()

        return forward, both

    def compile(
        self, analysis: Analysis, dtype: str = "float32", device: str = "cpu", **options: Any
    ) -> TorchModel:
        if options:
            raise RnncError(f"the torch backend takes no options {sorted(options)}")
        return TorchModel(analysis, dtype, device)


BACKEND = TorchBackend()
