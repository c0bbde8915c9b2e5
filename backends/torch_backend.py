"""The PyTorch backend: a checked spec -> a readable Python module importing only torch.

The module defines ``Model``, a plain ``torch.nn.Module`` whose parameters are
registered under rnnc's canonical names (``state_dict()`` keys are exactly the names of
``rnnc.init_params``), and whose ``forward`` takes batch-first tensors. It walks the
same :class:`rnnc.program.Program` as the NumPy backend:

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

import rnnc
from rnnc.checks import Analysis
from rnnc.errors import RnncError
from rnnc.interop import TORCH_ORDER
from rnnc.lower import CellStep
from rnnc.params import param_shapes, require_memory
from rnnc.program import Piece, Program, time_axes
from rnnc.runtime import CompiledModelBase, Loss, RunOptions, load_module, module_header
from rnnc.spec import DenseLayer, EmbeddingLayer, RecurrentLayer, TokenInput
from rnnc.weights import init_rules

from . import native
from .emit import (
    TORCH,
    CellFunctions,
    function_definitions,
    joined_inputs,
    merge,
    pack,
    used_helpers,
)

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


def attend(query, keys, memory, valid):
    """Attention of every query step over the valid memory steps (see the NumPy backend)."""
    scores = torch.einsum("tbh,sbh->tbs", query, keys)
    weights = softmax(torch.where(valid, scores, -1e30))
    return torch.einsum("tbs,sbm->tbm", weights, memory), weights


def valid_steps(mask):
    """(T, B, 1) step mask -> (1, B, T) booleans, to mask attention scores."""
    return mask[:, :, 0].T[None]


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


def register(root, name, parameter):
    """Put a parameter at a dotted canonical name, so state_dict() keys are the names,
    and return the key. Containers are plain Modules; a part that nn.Module keeps as
    an attribute of its own ('training', '_modules', ...), or Model's rnnc_like, gets a
    trailing '_'."""
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
    module._parameters[path[-1]] = parameter
    return ".".join(path)
'''
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


class _TorchProgram(Program):
    """Writes the generated module's ``run``: the forward pass, tensors in and out."""

    def __init__(self, analysis: Analysis):
        super().__init__(analysis)
        self.fwd: list[str] = []
        self.cell_function = CellFunctions(analysis, TORCH, grads=False)
        self.scanned: set[str] = set()  # cell functions a layer runs as a scan
        self.native: dict[str, tuple[CellStep, native.NativePlan]] = {}  # C steps by function
        self.functions = self.cell_function.of  # (layer, depth) -> function name

    def scan_function(self, fn: str, step: CellStep) -> str:
        """The autograd Function running a cell family's scan: through the cell's C
        steps where it fits (backends.native), else the Python scan."""
        found = native.plan(step)
        if found is None:
            return FUNCTION.format(fn=fn, cell=step.cell.name)
        self.native[fn] = (step, found)
        scan = native.emit_torch_scan(step, found, fn)
        return "\n\n\n" + scan + native.NATIVE_FUNCTION.format(fn=fn, cell=step.cell.name)

    # --- plain nodes -------------------------------------------------------------------

    def emit_input(self, name: str) -> None:
        data = self.g.nodes[name]
        inp = data["spec"]
        sequence = data["axis"] is not None
        turn = ".transpose(0, 1)" if sequence else ""
        if isinstance(inp, TokenInput):
            self.fwd.append(f"    v[{name + ':ids'!r}] = inputs[{name!r}]{turn}")
            if inp.embed is not None:
                table = f"params[{name + '.embedding'!r}]"
                self.fwd.append(f"    v[{name!r}] = {table}[v[{name + ':ids'!r}]]")
        else:
            self.fwd.append(f"    v[{name!r}] = inputs[{name!r}].to(dtype){turn}")
        if sequence and data["axis"] == name:
            key = name + (":ids" if isinstance(inp, TokenInput) else "")
            self.fwd.append(f"    T_{name} = v[{key!r}].shape[0]")
            self.fwd.append(f"    v['mask:{name}'] = step_mask(lengths[{name!r}], T_{name})")

    def emit_dense(self, name: str, layer: DenseLayer) -> None:
        joined, _ = joined_inputs(self, name, self.g.nodes[name]["axis"], TORCH)
        W, b = f"params[{name + '.W'!r}]", f"params[{name + '.b'!r}]"
        self.fwd.append(f"    v[{name!r}] = {layer.activation}({joined} @ {W}.T + {b})")

    def emit_embedding(self, name: str, layer: EmbeddingLayer) -> None:
        table = f"params[{name + '.embedding'!r}]"
        self.fwd.append(f"    v[{name!r}] = {table}[v[{layer.input + ':ids'!r}]]")

    # --- recurrent layers outside step loops -------------------------------------------

    def emit_recurrent(self, name: str, layer: RecurrentLayer) -> None:
        axis = self.g.nodes[name]["axis"]
        joined, pieces = joined_inputs(self, name, axis, TORCH)
        width = sum(piece[1] for piece in pieces)
        n_states = len(self.analysis.cells[layer.cell].state)
        fwd = self.fwd
        fwd.append(f"    v[{name + '.l0:in'!r}] = {joined}")
        fwd.append(f"    B_{axis} = v[{name + '.l0:in'!r}].shape[1]")
        h0 = f"torch.zeros((B_{axis}, {layer.hidden}), dtype=dtype, device=device)"
        if layer.init is not None:
            fwd += self.init_forward(name, layer)
            h0 = f"v[{name + ':h0'!r}]"
        top = layer.depth - 1
        for k in range(layer.depth):
            here = f"{name}.l{k}"
            X = width if k == 0 else layer.output_width
            if layer.cell in FUSED_CELLS:  # built-in: user cells may not take these names
                self.fused_depth(name, layer, k, X, h0)
            else:
                function = self.cell_function(name, k, layer, width)
                self.scanned.add(function)
                for d in layer.directions:
                    run = f"{name}.{d}.l{k}"
                    start = ", ".join([h0] * n_states)
                    fwd += [
                        f"    P = {function}_params(params, {run + '.'!r})",
                        f"    out = {function}_function.apply(v[{here + ':in'!r}], v['mask:{axis}'], "
                        f"{d == 'bwd'}, torch.is_grad_enabled(), tuple(P), *P.values(), {start})",
                        f"    v[{run!r}], v[{run + ':final'!r}] = out[0], out[1:]",
                    ]
            merged = merge(layer, [f"v[{f'{name}.{d}.l{k}'!r}]" for d in layer.directions], TORCH)
            if k > 0 and layer.residual:
                merged = f"{merged} + v[{here + ':in'!r}]"
            if k < top:
                target = f"{name}.l{k + 1}:in"
            else:
                target = f"{name}:h" if layer.attention is not None else name
            fwd.append(f"    v[{target!r}] = {merged}")
            if k < top and layer.dropout > 0:
                fwd += self.dropout(target, layer.dropout, f"v[{target!r}].shape")
        finals = [f"v[{f'{name}.{d}.l{top}:final'!r}]" for d in layer.directions]
        states = [merge(layer, [f"{f}[{i}]" for f in finals], TORCH) for i in range(n_states)]
        fwd.append(f"    v[{name + ':final'!r}] = {pack(states)}")
        if layer.attention is not None:  # Luong (additive attention runs in a step loop)
            fwd += self.luong(name, layer, f"v[{name + ':h'!r}]", name)

    def fused_depth(self, name: str, layer: RecurrentLayer, k: int, X: int, h0: str) -> None:
        """One depth of a built-in cell, both directions at once, through fused_scan."""
        axis = self.g.nodes[name]["axis"]
        H = layer.hidden
        weights = []
        for d in layer.directions:
            p = f"{name}.{d}.l{k}."
            weights += self.torch_weights(layer.cell, p, X, H)
        D = len(layer.directions)
        states = 2 if layer.cell == "lstm" else 1
        hx = pack([f"{h0}.expand({D}, -1, -1).contiguous()"] * states)
        xs = f"v[{f'{name}.l{k}:in'!r}]"
        lengths = f"lengths[{axis!r}]"
        if layer.directions == ("bwd",):  # a backward layer alone: the forward kernel on
            xs = f"flip_within({xs}, {lengths})"  # each example's steps reversed
        self.fwd += [
            f"    weights = [{', '.join(weights)}]",
            f"    ys, finals = fused_scan({layer.cell!r}, {xs}, {lengths}, {hx}, weights, {D == 2})",
        ]
        if layer.directions == ("bwd",):
            self.fwd.append(f"    ys = flip_within(ys, {lengths})")
        for i, d in enumerate(layer.directions):
            run = f"{name}.{d}.l{k}"
            part = "ys" if D == 1 else f"ys[..., {i * H}:{(i + 1) * H}]"
            self.fwd.append(
                f"    v[{run!r}], v[{run + ':final'!r}] = {part}, tuple(s[{i}] for s in finals)"
            )

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

    def init_forward(self, name: str, layer: RecurrentLayer) -> list[str]:
        """The first state of every depth and direction: the source's final h, maybe bridged."""
        assert layer.init is not None
        source = layer.init.from_
        if isinstance(self.spec.layers.get(source), RecurrentLayer):
            value = f"v[{source + ':final'!r}][{self.output_state(source)}]"
        else:
            value = f"v[{source!r}]"
        if layer.init.bridge == "dense":
            W, b = f"params[{name + '.bridge.W'!r}]", f"params[{name + '.bridge.b'!r}]"
            value = f"torch.tanh({value} @ {W}.T + {b})"
        return [f"    v[{name + ':h0'!r}] = {value}"]

    def luong(
        self, name: str, layer: RecurrentLayer, h: str, target: str, keys: str | None = None
    ) -> list[str]:
        """Luong attention on the top h of every step: tanh(W_c [context, h] + b_c)."""
        assert layer.attention is not None
        memory = layer.attention.memory
        axis = self.g.nodes[memory]["axis"]
        p = f"{name}.attention."
        if keys is None:
            keys = f"v[{memory!r}]"
            if layer.attention.score == "general":
                keys = f"v[{memory!r}] @ params[{p + 'W_a'!r}].T"
        return [
            f"    context, _ = attend({h}, {keys}, v[{memory!r}], valid_steps(v['mask:{axis}']))",
            f"    v[{target!r}] = torch.tanh(torch.cat([context, {h}], axis=-1) "
            f"@ params[{p + 'W_c'!r}].T + params[{p + 'b_c'!r}])",
        ]

    @staticmethod
    def dropout(key: str, p: float, shape: str) -> list[str]:
        """Inverted dropout on v[key] when run gets ``uniform`` (train mode only): the
        mask is drawn where and as the NumPy backend draws it, so both can agree."""
        drop = key.replace(":in", ":drop")
        return [
            "    if uniform is not None:",
            f"        v[{drop!r}] = (uniform({shape}) >= {p!r}).to(dtype) / {1 - p!r}",
            f"        v[{key!r}] = v[{key!r}] * v[{drop!r}]",
        ]

    # --- step loops ----------------------------------------------------------------------

    def piece_at_t(self, piece: Piece) -> str:
        if piece.kind in ("fed", "context"):
            return piece.kind
        ref = f"v[{piece.source!r}]"
        if piece.kind == "static":
            return ref
        if piece.delay:
            zeros = f"torch.zeros((B, {piece.width}), dtype=dtype, device=device)"
            return f"({ref}[t - {piece.delay}] if t >= {piece.delay} else {zeros})"
        return f"{ref}[t]"

    def emit_loop(self, members: list[str]) -> None:
        """Members run step by step; their steps collect in lists, stacked at the end
        (writing into a preallocated tensor would trip autograd's version checks)."""
        axis = self.g.nodes[members[0]]["axis"]
        fwd = self.fwd
        fwd.append(
            f"    # Step loop over {axis!r}: {', '.join(members)} (each step reads earlier steps)"
        )
        fwd.append(f"    T, B = T_{axis}, v['mask:{axis}'].shape[1]")
        fwd.append(
            f"    truth = tf_masks.get({axis!r}, torch.ones((B, T), dtype=torch.bool, device=device))"
        )
        for name in members:
            fwd.append(f"    v[{name!r}] = []")
            layer = self.spec.layers[name]
            if isinstance(layer, RecurrentLayer):
                self.loop_setup(name, layer)
        fwd.append("    for t in range(T):")
        fwd.append(f"        mask_t = v['mask:{axis}'][t]")
        for name in members:
            fwd += ["    " + line for line in self.loop_step(name)]
        for name in members:
            fwd.append(f"    v[{name!r}] = torch.stack(v[{name!r}])")
            layer = self.spec.layers[name]
            if isinstance(layer, RecurrentLayer):
                fwd.append(f"    v[{name + ':final'!r}] = state_{name}_l{layer.depth - 1}")

    def loop_setup(self, name: str, layer: RecurrentLayer) -> None:
        n_states = len(self.analysis.cells[layer.cell].state)
        width = sum(p.width for p in self.loop_pieces(name))
        fwd = self.fwd
        start = pack([f"torch.zeros((B, {layer.hidden}), dtype=dtype, device=device)"] * n_states)
        if layer.init is not None:
            fwd += self.init_forward(name, layer)
            start = pack([f"v[{name + ':h0'!r}]"] * n_states)
        for k in range(layer.depth):
            function = self.cell_function(name, k, layer, width)
            fwd.append(f"    P_{name}_l{k} = {function}_params(params, {f'{name}.fwd.l{k}.'!r})")
            fwd.append(f"    state_{name}_l{k} = {start}")
            if k > 0 and layer.dropout > 0:
                shape = f"(T, B, {layer.output_width})"
                fwd += self.dropout(f"{name}.l{k}:in", layer.dropout, shape)[:2]
        if layer.attention is not None:
            memory = layer.attention.memory
            p = f"{name}.attention."
            key = {"additive": "W_k", "general": "W_a"}.get(layer.attention.score)
            keys = f"v[{memory!r}]" + (f" @ params[{p + key!r}].T" if key else "")
            fwd.append(f"    v[{name + ':keys'!r}] = {keys}")

    def loop_step(self, name: str) -> list[str]:
        """Forward lines of one member at step t (indented for the loop body)."""
        layer = self.spec.layers[name]
        lines = []
        fed = self.fed(name)
        if fed is not None:
            if fed.tokens:
                lines += [
                    f"    ids = v[{fed.ids + ':ids'!r}][t]",
                    "    if t > 0:",
                    f"        ids = torch.where(truth[:, t], ids, v[{fed.prediction!r}][t - 1].argmax(axis=-1))",
                    f"    fed = params[{fed.table!r}][ids]",
                ]
            else:
                lines += [
                    f"    fed = v[{fed.source!r}][t]",
                    "    if t > 0:",
                    f"        fed = torch.where(truth[:, t, None], fed, v[{fed.prediction!r}][t - 1])",
                ]
        attention = layer.attention if isinstance(layer, RecurrentLayer) else None
        if attention is not None and attention.score == "additive":
            memory = attention.memory
            axis = self.g.nodes[memory]["axis"]
            p = f"{name}.attention."
            top = layer.depth - 1  # type: ignore[union-attr]
            query = f"state_{name}_l{top}[{self.output_state(name)}]"
            lines += [
                f"    energy = torch.tanh(v[{name + ':keys'!r}] + ({query} @ params[{p + 'W_q'!r}].T)[None])",
                f"    scores = (energy @ params[{p + 'v'!r}]).T[None]",
                f"    weights = softmax(torch.where(valid_steps(v['mask:{axis}']), scores, -1e30))",
                f"    context = torch.einsum('bs,sbm->bm', weights[0], v[{memory!r}])",
            ]
        parts = [self.piece_at_t(p) for p in self.loop_pieces(name)]
        joined = parts[0] if len(parts) == 1 else f"torch.cat([{', '.join(parts)}], axis=-1)"
        if isinstance(layer, DenseLayer):
            W, b = f"params[{name + '.W'!r}]", f"params[{name + '.b'!r}]"
            lines.append(f"    v[{name!r}].append({layer.activation}({joined} @ {W}.T + {b}))")
            return lines
        assert isinstance(layer, RecurrentLayer)
        lines.append(f"    y = {joined}")
        for k in range(layer.depth):
            P = f"P_{name}_l{k}"
            step = self.cell_function.step(name, k)
            bias = f" + {P}['b_x']" if any(step.x_bias) else ""
            xp = f"y @ {P}['W_x'].T{bias}" if step.x_blocks else "None"
            lines.append("    x_in = y")
            lines.append(
                f"    state_{name}_l{k}, y, _ = {self.functions[name, k]}_step({xp}, x_in, mask_t, state_{name}_l{k}, {P})"
            )
            if k > 0 and layer.residual:
                lines.append("    y = y + x_in")
            if k + 1 < layer.depth and layer.dropout > 0:
                key = f"{name}.l{k + 1}:drop"
                lines.append(f"    y = y * v[{key!r}][t] if {key!r} in v else y")
        if layer.attention is not None and layer.attention.score != "additive":
            lines += self.luong(name, layer, "y[None]", name + ":out", f"v[{name + ':keys'!r}]")
            lines.append(f"    y = v[{name + ':out'!r}][0]")
        lines.append(f"    v[{name!r}].append(y)")
        return lines

    # --- outputs and the module ----------------------------------------------------------

    def emit_output(self, name: str) -> None:
        out = self.spec.outputs[name]
        source = out.from_
        axis = self.g.nodes[source].get("axis")
        if out.state is not None:
            layer = self.spec.layers[source]
            index = self.analysis.cells[layer.cell].state.index(out.state)  # type: ignore[union-attr]
            value = f"v[{source + ':final'!r}][{index}]"
        elif axis is None:
            value = f"v[{source!r}]"
        elif out.steps == "last":
            batch = f"torch.arange(v[{source!r}].shape[1], device=device)"
            value = f"v[{source!r}][lengths[{axis!r}] - 1, {batch}]"
        elif self.zero_past_lengths(source):
            value = f"v[{source!r}].transpose(0, 1)"
        else:
            value = f"(v[{source!r}] * v['mask:{axis}']).transpose(0, 1)"
        self.fwd.append(f"    outputs[{name!r}] = {value}")

    def zero_past_lengths(self, node: str) -> bool:
        """Whether a node's steps past each example's length are zero already: those of
        a recurrent layer are (fused kernels and scans alike) unless attention or a
        residual connection adds to them afterwards."""
        layer = self.spec.layers.get(node)
        loop = any(node in group for group in self.loops())
        return (
            isinstance(layer, RecurrentLayer)
            and layer.attention is None
            and not (layer.residual and layer.depth > 1)
            and not loop
        )

    def run_function(self) -> str:
        self.emit_schedule("torch")
        lines = [
            "def run(params, inputs, lengths, tf_masks, uniform, like):",
            '    """The forward pass. inputs: batch-first tensors; lengths: (B,) per sequence\n'
            "    input; tf_masks: (B, T) booleans per time axis with feedback (true: read the\n"
            "    ground truth); uniform: None (no dropout) or shape -> uniform [0, 1) tensor.\n"
            "    like: a tensor of the model's dtype and device. Returns the outputs,\n"
            '    batch-first."""',
            "    dtype, device = like.dtype, like.device",
            "    v = {}",
            "    outputs = {}",
            *self.fwd,
            "    return outputs",
        ]
        return "\n".join(lines)

    def model_class(self) -> str:
        rules = init_rules(self.analysis)
        axes, fed_axes, truths = time_axes(self.analysis)
        shapes = {name: shape for name, (shape, _) in rules.items()}
        inits = {name: rule for name, (_, rule) in rules.items()}
        return f'''PARAM_SHAPES = {shapes!r}
INIT = {inits!r}  # (kind, value): N(0, 1), U(-value, value) or a constant
SEQUENCES = {tuple(axes)!r}  # sequence inputs that start a time axis
FEEDBACK = {fed_axes!r}  # time axis -> teacher-forcing probability
TRUTHS = {tuple(truths)!r}  # inputs whose later steps feedback replaces


class Model(torch.nn.Module):
    """{self.spec.name}: parameters under rnnc's canonical names; see forward."""

    def __init__(self, dtype=torch.float32, device=None):
        super().__init__()
        self.canonical = {{}}  # state_dict key -> rnnc's name (the same but for clashes)
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
        tensors: (B, T, size) reals or (B, T) token ids).

        lengths: (B,) for a spec with one sequence input, else a dict by input (default:
        full length). mode="train": a layer with feedback reads the ground truth where
        tf_mask (B, T) is true, else its own previous prediction (default: drawn with
        the spec's teacher_forcing probability); dropout when the module is training.
        mode="generate": free running for `steps` steps from the first ground-truth
        step. uniform: shape -> uniform [0, 1) tensor for dropout masks (default
        torch.rand while training).
        """
        params = {{self.canonical[key]: p for key, p in self.named_parameters()}}
        like = self.rnnc_like
        device = like.device
        inputs = dict(inputs)
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
        tf_masks = {{}}
        for axis, p in FEEDBACK.items():
            batch, total = inputs[axis].shape[:2]
            if mode == "generate":
                mask = torch.zeros((batch, total), dtype=torch.bool, device=device)
                mask[:, 0] = True
            elif tf_mask is not None:
                mask = tf_mask.get(axis) if isinstance(tf_mask, dict) else tf_mask
                mask = torch.as_tensor(mask, device=device).bool()
            else:
                mask = torch.rand((batch, total), device=device) < p
            tf_masks[axis] = mask
        if mode != "train":
            uniform = None
        elif uniform is None and self.training:
            uniform = lambda shape: torch.rand(shape, dtype=like.dtype, device=device)  # noqa: E731
        return run(params, inputs, by_axis, tf_masks, uniform, like)'''

    def module(self, header: str) -> str:
        run = self.run_function()
        families = [
            source
            + (self.scan_function(fn, self.cell_function.steps[fn]) if fn in self.scanned else "")
            for fn, source in self.cell_function.sources.items()
        ]
        body = [*families, run, self.model_class()]
        if self.native:  # the C steps: compiled and loaded on first use
            body.append(native.source_block(self.native).rstrip())
        prelude = used_helpers(PRELUDE.rstrip(), "\n".join(body))
        if self.native:
            prelude = native.IMPORTS + prelude + native.LOADER.rstrip()
        return "\n\n\n".join([header, prelude, *body]) + "\n"


def generate(analysis: Analysis) -> str:
    """The source of a standalone PyTorch module for a checked spec."""
    return _TorchProgram(analysis).module(module_header(analysis, "PyTorch", "torch"))


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

    def _forward(
        self, inputs: Mapping[str, Any], options: RunOptions, grad: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The module on the prepared inputs: its outputs, and the input tensors (real
        ones requiring grad when ``grad``)."""
        torch = self.torch
        inputs_, lengths_, masks = options.prepare(self.analysis, inputs)
        tensors = {}
        for name, value in inputs_.items():
            if isinstance(self.analysis.spec.inputs[name], TokenInput):
                tensors[name] = torch.as_tensor(value, dtype=torch.int64, device=self.device)
            else:
                t = torch.as_tensor(np.asarray(value, dtype=self.dtype), device=self.device)
                tensors[name] = t.requires_grad_(grad)
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
