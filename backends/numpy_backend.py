"""The NumPy backend: a checked spec -> a readable Python module importing only NumPy.

The module has a ``forward`` that runs the model and keeps what the backward pass
needs, and a ``backward`` (BPTT) derived from the cell equations by
:func:`rnnc.lower.reverse`: reverse-mode code, generated as source, no autograd.

Layout inside the module: values are time-major ``(T, B, width)``; inputs and outputs
are batch-first as the CompiledModel contract says. Every recurrent layer, depth and
direction runs a ``scan_*`` function generated from its lowered cell step, with the
input projections of all steps done in one matrix product before the loop and the
recurrent products of all gates stacked into one per state per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import rnnc
from rnnc.checks import Analysis
from rnnc.errors import RnncError
from rnnc.params import param_shapes, require_memory
from rnnc.program import Piece, Program
from rnnc.runtime import (
    CompiledModelBase,
    Loss,
    RunOptions,
    dropout_generator,
    load_module,
    module_header,
)
from rnnc.spec import DenseLayer, EmbeddingLayer, RecurrentLayer, TokenInput

from .emit import (
    NUMPY,
    CellFunctions,
    Joined,
    function_definitions,
    joined_inputs,
    merge,
    pack,
    used_helpers,
)

# The NumPy sigmoid: the one function written here rather than from rnnc.functions.
SIGMOID = '''\
def sigmoid(a):
    """1 / (1 + exp(-a)), as 0.5 (1 + tanh(a / 2)): one transcendental call, no overflow."""
    y = np.tanh(0.5 * a)
    y += 1.0  # in place: no more temporaries
    y *= 0.5
    return y
'''

PRELUDE = (
    "import numpy as np\n\n\n"
    + function_definitions(NUMPY, {"sigmoid": SIGMOID})
    + '''


def softmax(a):
    e = flushed_exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(a):
    shifted = a - a.max(axis=-1, keepdims=True)
    return shifted - np.log(flushed_exp(shifted).sum(axis=-1, keepdims=True))


def flushed_exp(a):
    """exp(a) for a <= 0, flushed to exactly 0 below -cut so no later product underflows
    (cut: 200 in float64, where exp is 1e-87; 25 in float32, where it is 1e-11)."""
    cut = 25.0 if np.result_type(a) == np.float32 else 200.0
    return np.where(a > -cut, np.exp(np.maximum(a, -cut)), 0.0)


def shift(values, delay):
    """values[t - delay] at step t, zeros before (a recurrent edge across time)."""
    out = np.zeros_like(values)
    out[delay:] = values[: values.shape[0] - delay]
    return out


def unshift(grad, delay):
    """The reverse of shift."""
    out = np.zeros_like(grad)
    out[: grad.shape[0] - delay] = grad[delay:]
    return out


def attend(query, keys, memory, valid):
    """Attention of every query step over the memory steps that are valid.

    weights[t, b, s] = softmax_s(query[t, b] . keys[s, b]) over s with valid[0, b, s];
    context[t, b] = sum_s weights[t, b, s] memory[s, b].
    """
    scores = np.einsum("tbh,sbh->tbs", query, keys)
    weights = softmax(np.where(valid, scores, -1e30))
    return np.einsum("tbs,sbm->tbm", weights, memory), weights


def attend_backward(d_context, query, keys, memory, weights):
    """Gradients of attend's context with respect to query, keys and memory."""
    d_weights = np.einsum("tbm,sbm->tbs", d_context, memory)
    d_memory = np.einsum("tbs,tbm->sbm", weights, d_context)
    d_scores = weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))
    d_query = np.einsum("tbs,sbh->tbh", d_scores, keys)
    d_keys = np.einsum("tbs,tbh->sbh", d_scores, query)
    return d_query, d_keys, d_memory


def valid_steps(mask):
    """(T, B, 1) step mask -> (1, B, T) booleans, to mask attention scores."""
    return (mask[:, :, 0].T > 0)[None]


def accumulate_at(grads, name, like, t, value):
    """grads[name][t] += value, starting from zeros shaped like `like`."""
    if name not in grads:
        grads[name] = np.zeros_like(like)
    grads[name][t] += value


def accumulate(grads, name, value):
    """grads[name] += value, starting from the first contribution."""
    grads[name] = value if name not in grads else grads[name] + value


def step_mask(lengths, steps, dtype):
    """(T, B, 1) booleans: true where step t is within the example's length."""
    return (np.arange(steps)[:, None] < lengths[None, :])[:, :, None]
'''
)


def _dense_slope(activation: str, y: str, d: str, pre: str) -> str:
    """The gradient of a dense layer's pre-activation ``pre`` from ``d``, that of its
    output ``y = activation(pre)``: an elementwise function's slope (rnnc.functions),
    or softmax's and log_softmax's Jacobian products."""
    if activation == "softmax":
        return f"{y} * ({d} - ({d} * {y}).sum(axis=-1, keepdims=True))"
    if activation == "log_softmax":
        return f"{d} - softmax({pre}) * {d}.sum(axis=-1, keepdims=True)"
    slope, precedence = NUMPY.functions.slope(activation, y)
    if slope == "1.0":
        return d
    return f"{d} * {slope if precedence >= 3 else f'({slope})'}"


BLOCK_HELPER = '''

def zeros_like_all(arrays):
    """A dict of zero arrays shaped like the given ones (gradients to add into); the
    R_s_T are transposed copies for the forward, whose gradients go to R_s."""
    return {name: np.zeros_like(value) for name, value in arrays.items() if name[-2:] != "_T"}
'''


# --- the whole program -----------------------------------------------------------------


class _Program(Program):
    """Writes the module-level ``forward`` and ``backward`` of a spec, op by op."""

    def __init__(self, analysis: Analysis):
        super().__init__(analysis)
        self.fwd: list[str] = []
        self.bwd: list[list[str]] = []  # blocks, emitted in reverse order
        self.cell_function = CellFunctions(self, NUMPY)
        self.functions = self.cell_function.of  # (layer, depth) -> function name

    def split_grad(self, grad: str, pieces: Joined, axis: str | None) -> list[str]:
        """Lines sending a gradient of joined inputs back to each input."""
        lines = []
        offset = 0
        for source, width, per_step, delay in pieces:
            part = grad if len(pieces) == 1 else f"{grad}[..., {offset}:{offset + width}]"
            if delay:
                part = f"unshift({part}, {delay})"
            if axis is not None and not per_step:
                part = f"{part}.sum(axis=0)"
            lines.append(f"    accumulate(g, {source!r}, {part})")
            offset += width
        return lines

    def emit_input(self, name: str) -> None:
        data = self.g.nodes[name]
        inp = data["spec"]
        sequence = data["axis"] is not None
        if isinstance(inp, TokenInput):
            ids = f"np.asarray(inputs[{name!r}])" + (".T" if sequence else "")
            self.fwd.append(f"    v[{name + ':ids'!r}] = {ids}")
            if inp.embed is not None:
                self.fwd.append(
                    f"    v[{name!r}] = params[{name + '.embedding'!r}][v[{name + ':ids'!r}]]"
                )
                self.bwd.append(
                    [
                        f"    if {name!r} in g:",
                        f"        table = np.zeros_like(params[{name + '.embedding'!r}])",
                        f"        np.add.at(table, v[{name + ':ids'!r}], g[{name!r}])",
                        f"        accumulate(grads, {name + '.embedding'!r}, table)",
                    ]
                )
        else:
            value = f"np.asarray(inputs[{name!r}], dtype=dtype)"
            self.fwd.append(
                f"    v[{name!r}] = {value}" + (".transpose(1, 0, 2)" if sequence else "")
            )
            back = f"g[{name!r}]" + (".transpose(1, 0, 2)" if sequence else "")
            self.bwd.append([f"    if {name!r} in g:", f"        input_grads[{name!r}] = {back}"])
        if sequence and data["axis"] == name:
            self.fwd.append(
                f"    T_{name} = v[{name + (':ids' if isinstance(inp, TokenInput) else '')!r}].shape[0]"
            )
            self.fwd.append(f"    v['mask:{name}'] = step_mask(lengths[{name!r}], T_{name}, dtype)")

    def emit_dense(self, name: str, layer: DenseLayer) -> None:
        axis = self.g.nodes[name]["axis"]
        joined, pieces = joined_inputs(self, name, axis, NUMPY)
        W, b = f"params[{name + '.W'!r}]", f"params[{name + '.b'!r}]"
        self.fwd.append(f"    v[{name + ':in'!r}] = {joined}")
        self.fwd.append(f"    v[{name + ':pre'!r}] = v[{name + ':in'!r}] @ {W}.T + {b}")
        self.fwd.append(f"    v[{name!r}] = {layer.activation}(v[{name + ':pre'!r}])")
        y, d = f"v[{name!r}]", f"g[{name!r}]"
        slope = _dense_slope(layer.activation, y, d, f"v[{name + ':pre'!r}]")
        block = [
            f"    if {name!r} in g:",
            f"        d_pre = {slope}",
            f"        x_in = v[{name + ':in'!r}]",
            f"        accumulate(grads, {name + '.W'!r}, d_pre.reshape(-1, d_pre.shape[-1]).T @ x_in.reshape(-1, x_in.shape[-1]))",
            f"        accumulate(grads, {name + '.b'!r}, d_pre.reshape(-1, d_pre.shape[-1]).sum(axis=0))",
            f"        d_in = d_pre @ {W}",
        ]
        block += ["    " + line for line in self.split_grad("d_in", pieces, axis)]
        self.bwd.append(block)

    def emit_embedding(self, name: str, layer: EmbeddingLayer) -> None:
        table = f"params[{name + '.embedding'!r}]"
        ids = f"v[{layer.input + ':ids'!r}]"
        self.fwd.append(f"    v[{name!r}] = {table}[{ids}]")
        self.bwd.append(
            [
                f"    if {name!r} in g:",
                f"        table = np.zeros_like({table})",
                f"        np.add.at(table, {ids}, g[{name!r}])",
                f"        accumulate(grads, {name + '.embedding'!r}, table)",
            ]
        )

    def emit_recurrent(self, name: str, layer: RecurrentLayer) -> None:
        g = self.g
        axis = g.nodes[name]["axis"]
        cell = self.analysis.cells[layer.cell]
        joined, pieces = joined_inputs(self, name, axis, NUMPY)
        width = sum(piece[1] for piece in pieces)
        H = layer.hidden
        n_states = len(cell.state)
        key = f"{name}.l0:in"
        self.fwd.append(f"    v[{key!r}] = {joined}")
        self.fwd.append(f"    B_{axis} = v[{key!r}].shape[1]")
        zeros = f"np.zeros((B_{axis}, {H}), dtype=dtype)"
        start = "(" + ", ".join([zeros] * n_states) + ",)"
        if layer.init is not None:
            self.fwd += self.init_forward(name, layer)
            start = "(" + ", ".join([f"v[{name + ':h0'!r}]"] * n_states) + ",)"
        top = layer.depth - 1
        luong = layer.attention is not None  # additive attention runs in a step loop
        for k in range(layer.depth):
            function = self.cell_function(name, k, layer, width)
            here = f"{name}.l{k}"
            for d in layer.directions:
                run = f"{name}.{d}.l{k}"
                self.fwd.append(f"    v[{run + ':P'!r}] = {function}_params(params, {run + '.'!r})")
                self.fwd.append(
                    f"    v[{run!r}], v[{run + ':final'!r}], v[{run + ':tape'!r}] = {function}("
                    f"v[{here + ':in'!r}], v['mask:{axis}'], {d == 'bwd'}, v[{run + ':P'!r}], {start})"
                )
            merged = merge(layer, [f"v[{f'{name}.{d}.l{k}'!r}]" for d in layer.directions], NUMPY)
            if k > 0 and layer.residual:
                merged = f"{merged} + v[{here + ':in'!r}]"
            if k < top:
                target = f"{name}.l{k + 1}:in"
            else:
                target = f"{name}:h" if luong else name
            self.fwd.append(f"    v[{target!r}] = {merged}")
            if k < top and layer.dropout > 0:
                self.fwd += self.dropout_forward(target, layer.dropout)
        finals = [f"v[{f'{name}.{d}.l{top}:final'!r}]" for d in layer.directions]
        final_states = ", ".join(
            merge(layer, [f"{f}[{i}]" for f in finals], NUMPY) for i in range(n_states)
        )
        self.fwd.append(f"    v[{name + ':final'!r}] = ({final_states},)")
        if luong:
            self.fwd += self.luong_forward(name, layer)

        back: list[str] = [f"    if {name!r} in g or {name + ':final'!r} in g:"]
        back.append(f"        B_{axis} = v[{key!r}].shape[1]")
        if luong:
            back += self.luong_backward(name, layer)
        else:
            back.append(f"        d_out = g.get({name!r}, np.zeros_like(v[{name!r}]))")
        if layer.init is not None:
            back.append("        d_h0 = 0.0")
        for k in reversed(range(layer.depth)):
            here = f"{name}.l{k}"
            back += ["    " + line for line in self.merge_back(layer, name, k)]
            back.append(f"        d_in = np.zeros_like(v[{here + ':in'!r}])")
            for d in layer.directions:
                run = f"{name}.{d}.l{k}"
                d_finals = (
                    self.merge_back_finals(layer, name, d, n_states, zeros)
                    if k == top
                    else "(" + ", ".join([zeros] * n_states) + ",)"
                )
                P = f"v[{run + ':P'!r}]"
                back += [
                    f"        D = zeros_like_all({P})",
                    f"        d_xs, d_first = {self.functions[name, k]}_backward(d_{d}, {d_finals}, "
                    f"v[{run + ':tape'!r}], v[{here + ':in'!r}], v['mask:{axis}'], {d == 'bwd'}, {P}, D)",
                    f"        {self.functions[name, k]}_grads(D, {run + '.'!r}, grads)",
                ]
                back.append("        d_in = d_in + d_xs")
                if layer.init is not None:
                    back.append("        d_h0 = d_h0 + sum(d_first)")
            if k > 0 and layer.residual:
                back.append("        d_in = d_in + d_out")
            if k > 0 and layer.dropout > 0:
                back.append(f"        d_in = d_in * v.get({here + ':drop'!r}, 1.0)")
            back.append("        d_out = d_in")
        back += ["    " + line for line in self.split_grad("d_out", pieces, axis)]
        if layer.init is not None:
            back += self.init_backward(name, layer)
        self.bwd.append(back)

    def init_forward(self, name: str, layer: RecurrentLayer) -> list[str]:
        """h0 of every depth, direction and state: the source's final h, maybe bridged."""
        assert layer.init is not None
        source = layer.init.from_
        src = self.spec.layers.get(source)
        if isinstance(src, RecurrentLayer):
            index = self.analysis.cells[src.cell].state.index(self.analysis.cells[src.cell].output)
            value = f"v[{source + ':final'!r}][{index}]"
        else:
            value = f"v[{source!r}]"
        lines = [f"    v[{name + ':init_from'!r}] = {value}"]
        if layer.init.bridge == "dense":
            W, b = f"params[{name + '.bridge.W'!r}]", f"params[{name + '.bridge.b'!r}]"
            lines.append(
                f"    v[{name + ':h0'!r}] = np.tanh(v[{name + ':init_from'!r}] @ {W}.T + {b})"
            )
        else:
            lines.append(f"    v[{name + ':h0'!r}] = v[{name + ':init_from'!r}]")
        return lines

    def init_backward(self, name: str, layer: RecurrentLayer) -> list[str]:
        assert layer.init is not None
        source = layer.init.from_
        lines = []
        if layer.init.bridge == "dense":
            W = f"params[{name + '.bridge.W'!r}]"
            h0 = f"v[{name + ':h0'!r}]"
            lines += [
                f"        d_pre = d_h0 * (1.0 - {h0} * {h0})",
                f"        accumulate(grads, {name + '.bridge.W'!r}, d_pre.T @ v[{name + ':init_from'!r}])",
                f"        accumulate(grads, {name + '.bridge.b'!r}, d_pre.sum(axis=0))",
                f"        d_from = d_pre @ {W}",
            ]
        else:
            lines.append("        d_from = d_h0")
        src = self.spec.layers.get(source)
        if isinstance(src, RecurrentLayer):
            cell = self.analysis.cells[src.cell]
            index, n = cell.state.index(cell.output), len(cell.state)
            lines += [
                f"        finals = list(g.get({source + ':final'!r}, [None] * {n}))",
                f"        finals[{index}] = add_or(finals[{index}], d_from)",
                f"        g[{source + ':final'!r}] = finals",
            ]
        else:
            lines.append(f"        accumulate(g, {source!r}, d_from)")
        return lines

    def luong_forward(self, name: str, layer: RecurrentLayer) -> list[str]:
        """Luong attention: query = the new top h; output tanh(W_c [context, h] + b_c)."""
        assert layer.attention is not None
        memory = layer.attention.memory
        axis = self.g.nodes[memory]["axis"]
        p = f"{name}.attention."
        keys = f"v[{memory!r}]"
        if layer.attention.score == "general":
            keys = f"v[{memory!r}] @ params[{p + 'W_a'!r}].T"
        return [
            f"    v[{name + ':keys'!r}] = {keys}",
            f"    v[{name + ':context'!r}], v[{name + ':weights'!r}] = attend("
            f"v[{name + ':h'!r}], v[{name + ':keys'!r}], v[{memory!r}], valid_steps(v['mask:{axis}']))",
            f"    v[{name + ':cat'!r}] = np.concatenate([v[{name + ':context'!r}], v[{name + ':h'!r}]], axis=-1)",
            f"    v[{name!r}] = np.tanh(v[{name + ':cat'!r}] @ params[{p + 'W_c'!r}].T + params[{p + 'b_c'!r}])",
        ]

    def luong_backward(self, name: str, layer: RecurrentLayer) -> list[str]:
        assert layer.attention is not None
        memory = layer.attention.memory
        M = self.g.nodes[memory]["width"]
        p = f"{name}.attention."
        out = f"v[{name!r}]"
        lines = [
            f"        d_pre = g.get({name!r}, np.zeros_like({out})) * (1.0 - {out} * {out})",
            f"        cat = v[{name + ':cat'!r}]",
            f"        accumulate(grads, {p + 'W_c'!r}, d_pre.reshape(-1, d_pre.shape[-1]).T @ cat.reshape(-1, cat.shape[-1]))",
            f"        accumulate(grads, {p + 'b_c'!r}, d_pre.reshape(-1, d_pre.shape[-1]).sum(axis=0))",
            f"        d_cat = d_pre @ params[{p + 'W_c'!r}]",
            f"        d_query, d_keys, d_memory = attend_backward(d_cat[..., :{M}], v[{name + ':h'!r}], "
            f"v[{name + ':keys'!r}], v[{memory!r}], v[{name + ':weights'!r}])",
            f"        d_out = d_cat[..., {M}:] + d_query",
        ]
        if layer.attention.score == "general":
            mem = f"v[{memory!r}]"
            lines += [
                f"        accumulate(grads, {p + 'W_a'!r}, d_keys.reshape(-1, d_keys.shape[-1]).T @ {mem}.reshape(-1, {mem}.shape[-1]))",
                f"        d_memory = d_memory + d_keys @ params[{p + 'W_a'!r}]",
            ]
        else:
            lines.append("        d_memory = d_memory + d_keys")
        lines.append(f"        accumulate(g, {memory!r}, d_memory)")
        return lines

    # --- step loops (feedback, additive attention, recurrent edges from what a layer feeds)

    def emit_loop(self, members: list[str]) -> None:
        axis = self.g.nodes[members[0]]["axis"]
        member_set = set(members)
        fwd = self.fwd
        fwd.append(
            f"    # Step loop over {axis!r}: {', '.join(members)} (each step reads earlier steps)"
        )
        fwd.append(f"    T, B = T_{axis}, v['mask:{axis}'].shape[1]")
        fwd.append(f"    truth = tf_masks.get({axis!r}, np.ones((B, T), dtype=bool))")
        fwd.append(f"    v['truth:{axis}'] = truth")
        for name in members:
            layer = self.spec.layers[name]
            width = sum(p.width for p in self.loop_pieces(name))
            fwd.append(
                f"    v[{name!r}] = np.zeros((T, B, {self.g.nodes[name]['width']}), dtype=dtype)"
            )
            in_key = f"{name}.l0:in" if isinstance(layer, RecurrentLayer) else f"{name}:in"
            fwd.append(f"    v[{in_key!r}] = np.zeros((T, B, {width}), dtype=dtype)")
            fed = self.fed(name)
            if fed is not None and fed.tokens:
                fwd.append(f"    v[{name + ':fed_ids'!r}] = np.zeros((T, B), dtype=np.int64)")
            if isinstance(layer, RecurrentLayer):
                self.loop_setup(name, layer, width)
        fwd.append("    for t in range(T):")
        fwd.append(f"        mask_t = v['mask:{axis}'][t]")
        for name in members:
            layer = self.spec.layers[name]
            fwd += ["    " + line for line in self.loop_step(name, layer, member_set)]
        for name in members:
            layer = self.spec.layers[name]
            if isinstance(layer, RecurrentLayer):
                self.loop_finish(name, layer)
        self.bwd.append(self.loop_backward(members, axis))

    @staticmethod
    def piece_at_t(piece: Piece) -> str:
        """The expression for what a step-loop member reads from ``piece`` at step t."""
        if piece.kind in ("fed", "context"):
            return piece.kind
        ref = f"v[{piece.source!r}]"
        if piece.kind == "static":
            return ref
        if piece.delay:
            return f"({ref}[t - {piece.delay}] if t >= {piece.delay} else np.zeros_like({ref}[0]))"
        return f"{ref}[t]"

    def loop_setup(self, name: str, layer: RecurrentLayer, width: int) -> None:
        cell = self.analysis.cells[layer.cell]
        H = layer.hidden
        fwd = self.fwd
        zeros = f"np.zeros((B, {H}), dtype=dtype)"
        start = pack([zeros] * len(cell.state))
        if layer.init is not None:
            fwd += self.init_forward(name, layer)
            start = pack([f"v[{name + ':h0'!r}]"] * len(cell.state))
        for k in range(layer.depth):
            function = self.cell_function(name, k, layer, width)
            run = f"{name}.fwd.l{k}"
            fwd.append(f"    v[{run + ':P'!r}] = {function}_params(params, {run + '.'!r})")
            fwd.append(f"    v[{run + ':tape'!r}] = [None] * T")
            fwd.append(f"    state_{name}_l{k} = {start}")
            if k > 0:
                fwd.append(
                    f"    v[{f'{name}.l{k}:in'!r}] = np.zeros((T, B, {layer.output_width}), dtype=dtype)"
                )
                if layer.dropout > 0:
                    fwd += self.dropout_forward(f"{name}.l{k}:in", layer.dropout, draw_only=True)
        if layer.attention is not None:
            memory = layer.attention.memory
            p = f"{name}.attention."
            if layer.attention.score == "additive":
                fwd.append(f"    v[{name + ':keys'!r}] = v[{memory!r}] @ params[{p + 'W_k'!r}].T")
            elif layer.attention.score == "general":
                fwd.append(f"    v[{name + ':keys'!r}] = v[{memory!r}] @ params[{p + 'W_a'!r}].T")
            else:
                fwd.append(f"    v[{name + ':keys'!r}] = v[{memory!r}]")
            M = self.g.nodes[memory]["width"]
            S = f"v[{memory!r}].shape[0]"
            fwd.append(f"    v[{name + ':weights'!r}] = np.zeros((T, B, {S}), dtype=dtype)")
            fwd.append(f"    v[{name + ':context'!r}] = np.zeros((T, B, {M}), dtype=dtype)")
            if layer.attention.score != "additive":
                fwd.append(f"    v[{name + ':h'!r}] = np.zeros((T, B, {H}), dtype=dtype)")
            else:
                fwd.append(f"    v[{name + ':query'!r}] = np.zeros((T, B, {H}), dtype=dtype)")

    def loop_step(self, name: str, layer: Any, members: set[str]) -> list[str]:
        """Forward lines of one member at step t (indented for the loop body)."""
        lines = []
        pieces = self.loop_pieces(name)
        fed = self.fed(name)
        if fed is not None:
            source, prediction = fed.source, fed.prediction
            if fed.tokens:
                ids, table = f"v[{fed.ids + ':ids'!r}]", f"params[{fed.table!r}]"
                lines += [
                    f"    ids = {ids}[t]",
                    "    if t > 0:",
                    f"        ids = np.where(truth[:, t], ids, v[{prediction!r}][t - 1].argmax(axis=-1))",
                    f"    v[{name + ':fed_ids'!r}][t] = ids",
                    f"    fed = {table}[ids]",
                ]
            else:
                lines += [
                    f"    fed = v[{source!r}][t]",
                    "    if t > 0:",
                    f"        fed = np.where(truth[:, t, None], fed, v[{prediction!r}][t - 1])",
                ]
        additive = isinstance(layer, RecurrentLayer) and layer.attention is not None
        if additive and layer.attention.score == "additive":
            memory = layer.attention.memory
            axis = self.g.nodes[memory]["axis"]
            cell = self.analysis.cells[layer.cell]
            top = layer.depth - 1
            out_index = cell.state.index(cell.output)
            p = f"{name}.attention."
            lines += [
                f"    query = state_{name}_l{top}[{out_index}]",
                f"    v[{name + ':query'!r}][t] = query",
                f"    energy = np.tanh(v[{name + ':keys'!r}] + (query @ params[{p + 'W_q'!r}].T)[None])",
                f"    scores = (energy @ params[{p + 'v'!r}]).T[None]",
                f"    weights = softmax(np.where(valid_steps(v['mask:{axis}']), scores, -1e30))",
                f"    v[{name + ':weights'!r}][t] = weights[0]",
                f"    context = np.einsum('bs,sbm->bm', weights[0], v[{memory!r}])",
                f"    v[{name + ':context'!r}][t] = context",
            ]
        parts = [self.piece_at_t(p) for p in pieces]
        joined = parts[0] if len(parts) == 1 else f"np.concatenate([{', '.join(parts)}], axis=-1)"
        if isinstance(layer, RecurrentLayer):
            lines.append(f"    v[{name + '.l0:in'!r}][t] = {joined}")
            for k in range(layer.depth):
                run = f"{name}.fwd.l{k}"
                x_in = f"v[{f'{name}.l{k}:in'!r}][t]"
                P = f"v[{run + ':P'!r}]"
                step = self.cell_function.step(name, k)
                bias = f" + {P}['b_x']" if any(step.x_bias) else ""
                xp = f"{x_in} @ {P}['W_x'].T{bias}" if step.x_blocks else "None"
                lines.append(
                    f"    state_{name}_l{k}, y, v[{run + ':tape'!r}][t] = {self.functions[name, k]}_step("
                    f"{xp}, {x_in}, mask_t, state_{name}_l{k}, {P})"
                )
                if k > 0 and layer.residual:
                    lines.append(f"    y = y + {x_in}")
                if k + 1 < layer.depth:
                    if layer.dropout > 0:
                        key = f"{name}.l{k + 1}:drop"
                        lines.append(f"    y = y * v[{key!r}][t] if {key!r} in v else y")
                    lines.append(f"    v[{f'{name}.l{k + 1}:in'!r}][t] = y")
            if layer.attention is not None and layer.attention.score != "additive":
                memory = layer.attention.memory
                axis = self.g.nodes[memory]["axis"]
                p = f"{name}.attention."
                lines += [
                    f"    v[{name + ':h'!r}][t] = y",
                    f"    context, weights = attend(y[None], v[{name + ':keys'!r}], v[{memory!r}], valid_steps(v['mask:{axis}']))",
                    f"    v[{name + ':context'!r}][t], v[{name + ':weights'!r}][t] = context[0], weights[0]",
                    f"    y = np.tanh(np.concatenate([context[0], y], axis=-1) @ params[{p + 'W_c'!r}].T + params[{p + 'b_c'!r}])",
                ]
            lines.append(f"    v[{name!r}][t] = y")
        else:  # a dense layer
            W, b = f"params[{name + '.W'!r}]", f"params[{name + '.b'!r}]"
            lines += [
                f"    v[{name + ':in'!r}][t] = {joined}",
                f"    v[{name!r}][t] = {layer.activation}(v[{name + ':in'!r}][t] @ {W}.T + {b})",
            ]
        return lines

    def loop_finish(self, name: str, layer: RecurrentLayer) -> None:
        """After the loop: the layer's final states are those of its top depth."""
        self.fwd.append(f"    v[{name + ':final'!r}] = state_{name}_l{layer.depth - 1}")

    def loop_backward(self, members: list[str], axis: str) -> list[str]:
        member_set = set(members)
        finals = " or ".join(
            f"{n + ':final'!r} in g"
            for n in members
            if isinstance(self.spec.layers[n], RecurrentLayer)
        )
        cond = " or ".join([f"{n!r} in g" for n in members] + ([finals] if finals else []))
        b = [
            f"    if {cond}:",
            f"        T, B = v['mask:{axis}'].shape[:2]",
            f"        truth = v['truth:{axis}']",
        ]
        for name in members:
            b.append(f"        g[{name!r}] = g.get({name!r}, np.zeros_like(v[{name!r}]))")
            layer = self.spec.layers[name]
            if isinstance(layer, RecurrentLayer):
                cell = self.analysis.cells[layer.cell]
                n = len(cell.state)
                H = layer.hidden
                zeros = f"np.zeros((B, {H}), dtype=dtype)"
                for k in range(layer.depth):
                    run = f"{name}.fwd.l{k}"
                    b.append(f"        D_{name}_l{k} = zeros_like_all(v[{run + ':P'!r}])")
                    if k == layer.depth - 1:
                        b.append(
                            f"        d_state_{name}_l{k} = {self.merge_back_finals(layer, name, 'fwd', n, zeros)}"
                        )
                    else:
                        b.append(f"        d_state_{name}_l{k} = {pack([zeros] * n)}")
                if layer.attention is not None:
                    b.append(f"        d_keys_{name} = np.zeros_like(v[{name + ':keys'!r}])")
                    b.append(
                        f"        d_memory_{name} = np.zeros_like(v[{layer.attention.memory!r}])"
                    )
                fed = self.fed(name)
                if fed is not None and fed.tokens:
                    b.append(f"        d_table_{name} = np.zeros_like(params[{fed.table!r}])")
        b.append("        for t in reversed(range(T)):")
        b.append(f"            mask_t = v['mask:{axis}'][t]")
        for name in reversed(members):
            layer = self.spec.layers[name]
            b += ["        " + line for line in self.loop_step_backward(name, layer, member_set)]
        for name in members:
            layer = self.spec.layers[name]
            if isinstance(layer, RecurrentLayer):
                b += self.loop_backward_finish(name, layer)
        return b

    def loop_step_backward(self, name: str, layer: Any, members: set[str]) -> list[str]:
        lines: list[str] = []
        pieces = self.loop_pieces(name)
        if isinstance(layer, RecurrentLayer):
            p = f"{name}.attention."
            lines.append(f"    d_y = g[{name!r}][t]")
            if layer.attention is not None and layer.attention.score != "additive":
                memory = layer.attention.memory
                M = self.g.nodes[memory]["width"]
                lines += [
                    f"    out = v[{name!r}][t]",
                    "    d_pre = d_y * (1.0 - out * out)",
                    f"    cat = np.concatenate([v[{name + ':context'!r}][t], v[{name + ':h'!r}][t]], axis=-1)",
                    f"    accumulate(grads, {p + 'W_c'!r}, d_pre.T @ cat)",
                    f"    accumulate(grads, {p + 'b_c'!r}, d_pre.sum(axis=0))",
                    f"    d_cat = d_pre @ params[{p + 'W_c'!r}]",
                    f"    d_query, d_keys, d_memory = attend_backward(d_cat[None, :, :{M}], v[{name + ':h'!r}][t][None], "
                    f"v[{name + ':keys'!r}], v[{memory!r}], v[{name + ':weights'!r}][t][None])",
                    f"    d_keys_{name} += d_keys",
                    f"    d_memory_{name} += d_memory",
                    f"    d_y = d_cat[:, {M}:] + d_query[0]",
                ]
            for k in reversed(range(layer.depth)):
                run = f"{name}.fwd.l{k}"
                x_in = f"v[{f'{name}.l{k}:in'!r}][t]"
                P = f"v[{run + ':P'!r}]"
                function = self.functions[name, k]
                lines += [
                    f"    d_xp, d_x, d_state_{name}_l{k}, d_rps = {function}_step_backward("
                    f"d_state_{name}_l{k}, d_y, v[{run + ':tape'!r}][t], {x_in}, mask_t, {P}, D_{name}_l{k})",
                    f"    {function}_recurrent_grads(D_{name}_l{k}, d_rps, v[{run + ':tape'!r}][t])",
                ]
                lines.append(f"    d_in = np.zeros_like({x_in})")
                lines.append("    if d_xp is not None:")
                lines.append(f"        d_in = d_in + d_xp @ {P}['W_x']")
                lines.append(f"        D_{name}_l{k}['W_x'] += d_xp.T @ {x_in}")
                if any(self.cell_function.step(name, k).x_bias):
                    lines.append(f"        D_{name}_l{k}['b_x'] += d_xp.sum(axis=0)")
                lines.append("    if d_x is not None:")
                lines.append("        d_in = d_in + d_x")
                if k > 0 and layer.residual:
                    lines.append("    d_in = d_in + d_y")
                if k > 0 and layer.dropout > 0:
                    lines.append(
                        f"    d_in = d_in * v[{f'{name}.l{k}:drop'!r}][t] if {f'{name}.l{k}:drop'!r} in v else d_in"
                    )
                lines.append("    d_y = d_in")
        else:
            W = f"params[{name + '.W'!r}]"
            y = f"v[{name!r}][t]"
            d = f"g[{name!r}][t]"
            pre = f"(v[{name + ':in'!r}][t] @ {W}.T + params[{name + '.b'!r}])"
            slope = _dense_slope(layer.activation, y, d, pre)
            lines += [
                f"    d_pre = {slope}",
                f"    accumulate(grads, {name + '.W'!r}, d_pre.T @ v[{name + ':in'!r}][t])",
                f"    accumulate(grads, {name + '.b'!r}, d_pre.sum(axis=0))",
                f"    d_in = d_pre @ {W}",
            ]
        offset = 0
        for kind, source, width, delay in ((p.kind, p.source, p.width, p.delay) for p in pieces):
            part = f"d_in[:, {offset}:{offset + width}]" if len(pieces) > 1 else "d_in"
            offset += width
            if kind == "static":
                lines.append(f"    accumulate(g, {source!r}, {part})")
            elif kind == "step":
                if delay:
                    lines.append(f"    if t >= {delay}:")
                    lines.append(
                        f"        accumulate_at(g, {source!r}, v[{source!r}], t - {delay}, {part})"
                    )
                else:
                    lines.append(f"    accumulate_at(g, {source!r}, v[{source!r}], t, {part})")
            elif kind == "fed":
                fed = self.fed(name)
                assert fed is not None
                fed_source, prediction = fed.source, fed.prediction
                if fed.tokens:
                    lines.append(
                        f"    np.add.at(d_table_{name}, v[{name + ':fed_ids'!r}][t], {part})"
                    )
                else:
                    lines += [
                        f"    accumulate_at(g, {fed_source!r}, v[{fed_source!r}], t, np.where(truth[:, t, None] | (t == 0), {part}, 0.0))",
                        "    if t > 0:",
                        f"        accumulate_at(g, {prediction!r}, v[{prediction!r}], t - 1, np.where(truth[:, t, None], 0.0, {part}))",
                    ]
            elif kind == "context":
                memory = source
                top = layer.depth - 1
                cell = self.analysis.cells[layer.cell]
                out_index = cell.state.index(cell.output)
                p = f"{name}.attention."
                lines += [
                    f"    weights = v[{name + ':weights'!r}][t]",
                    f"    d_weights = np.einsum('bm,sbm->bs', {part}, v[{memory!r}])",
                    f"    d_memory_{name} += np.einsum('bs,bm->sbm', weights, {part})",
                    "    d_scores = weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))",
                    f"    energy = np.tanh(v[{name + ':keys'!r}] + (v[{name + ':query'!r}][t] @ params[{p + 'W_q'!r}].T)[None])",
                    f"    accumulate(grads, {p + 'v'!r}, np.einsum('bs,sba->a', d_scores, energy))",
                    f"    d_energy = d_scores.T[:, :, None] * params[{p + 'v'!r}] * (1.0 - energy * energy)",
                    f"    d_keys_{name} += d_energy",
                    "    d_q = d_energy.sum(axis=0)",
                    f"    accumulate(grads, {p + 'W_q'!r}, d_q.T @ v[{name + ':query'!r}][t])",
                    f"    d_state = list(d_state_{name}_l{top})",
                    f"    d_state[{out_index}] = d_state[{out_index}] + d_q @ params[{p + 'W_q'!r}]",
                    f"    d_state_{name}_l{top} = tuple(d_state)",
                ]
        return lines

    def loop_backward_finish(self, name: str, layer: RecurrentLayer) -> list[str]:
        lines = []
        if layer.init is not None:
            lines.append(
                "        d_h0 = "
                + " + ".join(f"sum(d_state_{name}_l{k})" for k in range(layer.depth))
            )
        for k in range(layer.depth):
            lines.append(
                f"        {self.functions[name, k]}_grads(D_{name}_l{k}, {f'{name}.fwd.l{k}.'!r}, grads)"
            )
        if layer.attention is not None:
            memory = layer.attention.memory
            p = f"{name}.attention."
            key = {"additive": "W_k", "general": "W_a"}.get(layer.attention.score)
            if key is not None:
                lines += [
                    f"        d_k = d_keys_{name}.reshape(-1, d_keys_{name}.shape[-1])",
                    f"        accumulate(grads, {p + key!r}, d_k.T @ v[{memory!r}].reshape(-1, v[{memory!r}].shape[-1]))",
                    f"        d_memory_{name} += d_keys_{name} @ params[{p + key!r}]",
                ]
            else:
                lines.append(f"        d_memory_{name} += d_keys_{name}")
            lines.append(f"        accumulate(g, {memory!r}, d_memory_{name})")
        fed = self.fed(name)
        if fed is not None and fed.tokens:
            lines.append(f"        accumulate(grads, {fed.table!r}, d_table_{name})")
        if layer.init is not None:
            lines += self.init_backward(name, layer)
        return lines

    @staticmethod
    def dropout_forward(key: str, p: float, draw_only: bool = False) -> list[str]:
        """Inverted dropout on v[key] when forward gets a generator (train mode only)."""
        drop = key.replace(":in", ":drop")
        lines = [
            "    if dropout is not None:",
            f"        v[{drop!r}] = (dropout.random(v[{key!r}].shape) >= {p!r}).astype(dtype) / {1 - p!r}",
        ]
        if not draw_only:
            lines.append(f"        v[{key!r}] = v[{key!r}] * v[{drop!r}]")
        return lines

    def merge_back(self, layer: RecurrentLayer, name: str, k: int) -> list[str]:
        """Lines giving d_fwd / d_bwd (the gradient of each direction) from d_out."""
        if len(layer.directions) == 1:
            return [f"    d_{layer.directions[0]} = d_out"]
        H = layer.hidden
        f, b = f"v[{f'{name}.fwd.l{k}'!r}]", f"v[{f'{name}.bwd.l{k}'!r}]"
        return {
            "concat": [f"    d_fwd, d_bwd = d_out[..., :{H}], d_out[..., {H}:]"],
            "sum": ["    d_fwd, d_bwd = d_out, d_out"],
            "mean": ["    d_fwd, d_bwd = 0.5 * d_out, 0.5 * d_out"],
            "mul": [f"    d_fwd, d_bwd = d_out * {b}, d_out * {f}"],
        }[layer.merge]

    def merge_back_finals(
        self, layer: RecurrentLayer, name: str, d: str, n: int, zeros: str
    ) -> str:
        """The gradient reaching one direction's final states from the layer's 'state' outputs."""
        top = layer.depth - 1
        parts = []
        for i in range(n):
            grad = f"g.get({name + ':final'!r}, [None] * {n})[{i}]"
            if len(layer.directions) == 1 or layer.merge in ("sum",):
                piece = grad
            elif layer.merge == "mean":
                piece = f"scale({grad}, 0.5)"
            elif layer.merge == "concat":
                H = layer.hidden
                piece = f"part({grad}, {0 if d == 'fwd' else H}, {H})"
            else:
                other = "bwd" if d == "fwd" else "fwd"
                piece = f"times({grad}, v[{f'{name}.{other}.l{top}:final'!r}][{i}])"
            parts.append(f"or_zeros({piece}, {zeros})")
        return "(" + ", ".join(parts) + ",)"

    def emit_output(self, name: str) -> None:
        out = self.spec.outputs[name]
        source = out.from_
        axis = self.g.nodes[source].get("axis")
        if out.state is not None:
            layer = self.spec.layers[source]
            index = self.analysis.cells[layer.cell].state.index(out.state)  # type: ignore[union-attr]
            self.fwd.append(f"    outputs[{name!r}] = v[{source + ':final'!r}][{index}]")
            n = len(self.analysis.cells[layer.cell].state)  # type: ignore[union-attr]
            self.bwd.append(
                [
                    f"    if {name!r} in cotangents:",
                    f"        finals = list(g.get({source + ':final'!r}, [None] * {n}))",
                    f"        finals[{index}] = add_or({f'finals[{index}]'}, np.asarray(cotangents[{name!r}], dtype=dtype))",
                    f"        g[{source + ':final'!r}] = finals",
                ]
            )
        elif axis is None:
            self.fwd.append(f"    outputs[{name!r}] = v[{source!r}]")
            self.bwd.append(
                [
                    f"    if {name!r} in cotangents:",
                    f"        accumulate(g, {source!r}, np.asarray(cotangents[{name!r}], dtype=dtype))",
                ]
            )
        elif out.steps == "last":
            last = f"lengths[{axis!r}] - 1, np.arange(v[{source!r}].shape[1])"
            self.fwd.append(f"    outputs[{name!r}] = v[{source!r}][{last}]")
            self.bwd.append(
                [
                    f"    if {name!r} in cotangents:",
                    f"        d = np.zeros_like(v[{source!r}])",
                    f"        d[{last}] = cotangents[{name!r}]",
                    f"        accumulate(g, {source!r}, d)",
                ]
            )
        else:
            mask = f"v['mask:{axis}']"
            self.fwd.append(f"    outputs[{name!r}] = (v[{source!r}] * {mask}).transpose(1, 0, 2)")
            self.bwd.append(
                [
                    f"    if {name!r} in cotangents:",
                    f"        accumulate(g, {source!r}, np.asarray(cotangents[{name!r}], dtype=dtype).transpose(1, 0, 2) * {mask})",
                ]
            )

    def module(self, header: str) -> str:
        self.emit_schedule("numpy")
        forward = [
            "def forward(params, inputs, lengths, dtype=np.float64, tf_masks=None, dropout=None):",
            '    """Run the model. inputs are batch-first; lengths maps each sequence input\n'
            "    to (B,) lengths; tf_masks maps a time axis to (B, T) booleans: where true a\n"
            "    layer with feedback reads the ground truth, else its own previous prediction\n"
            "    (default: the ground truth); dropout is None (off) or a numpy Generator for\n"
            '    the masks. Returns (outputs, v): v keeps what backward needs."""',
            "    tf_masks = tf_masks or {}",
            "    v = {}",
            "    outputs = {}",
            *self.fwd,
            "    return outputs, v",
        ]
        backward = [
            "def backward(params, inputs, lengths, v, cotangents, dtype=np.float64):",
            '    """Gradients of sum(output * cotangent) for every parameter and real input."""',
            "    g = {}",
            "    grads = {}",
            "    input_grads = {}",
        ]
        for block in reversed(self.bwd):
            backward += block
        real = [name for name, inp in self.spec.inputs.items() if not isinstance(inp, TokenInput)]
        backward += [
            "    for name, value in params.items():",
            "        if name not in grads:",
            "            grads[name] = np.zeros_like(value)",
            f"    for name in {tuple(real)!r}:  # real inputs no output depends on",
            "        if name not in input_grads:",
            "            input_grads[name] = np.zeros(np.shape(inputs[name]), dtype=dtype)",
            "    return {**grads, **input_grads}",
        ]
        body = [*self.cell_function.sources.values(), "\n".join(forward), "\n".join(backward)]
        helpers = used_helpers(LIBRARY, "\n".join(body), keep=RUNTIME_HELPERS)
        return "\n\n\n".join([header, helpers, *body]) + "\n"


# Helpers the runtime looks up by name (rnnc gradflow), kept whether the module uses them.
RUNTIME_HELPERS = ("zeros_like_all",)

GRAD_HELPERS = """
def or_zeros(value, zeros):
    return zeros if value is None else value


def add_or(value, extra):
    return extra if value is None else value + extra


def scale(value, factor):
    return None if value is None else factor * value


def part(value, start, width):
    return None if value is None else value[..., start:start + width]


def times(value, other):
    return None if value is None else value * other
"""


# Every helper a NumPy module may need; each module carries the ones it uses.
LIBRARY = "\n\n\n".join([PRELUDE.rstrip(), BLOCK_HELPER.strip(), GRAD_HELPERS.strip()])


def generate(analysis: Analysis) -> str:
    """The source of a standalone NumPy module for a checked spec."""
    return _generate(analysis)[0]


def _generate(analysis: Analysis) -> tuple[str, dict[tuple[str, int], str]]:
    """The source, and the name of the cell functions of every (layer, depth)."""
    program = _Program(analysis)
    return program.module(module_header(analysis, "NumPy", "numpy")), program.functions


class NumpyModel(CompiledModelBase):
    """A compiled model on the NumPy backend (the CompiledModel interface)."""

    backend = "numpy"

    def __init__(self, analysis: Analysis, dtype: str = "float64"):
        self.analysis = analysis
        self.dtype = np.dtype(dtype)
        self.source, self.functions = _generate(analysis)
        self._shapes = param_shapes(analysis)
        # The generated functions, kept for tools like rnnc gradflow.
        self.namespace = load_module(self.source, analysis, "numpy")
        self._forward = self.namespace["forward"]
        self._backward = self.namespace["backward"]
        self._loaded: dict[str, np.ndarray] | None = None  # see _params

    @property
    def _params(self) -> dict[str, np.ndarray]:
        """The parameters; rnnc.init_params(seed=0) drawn on first use, so compiling
        allocates none (``rnnc compile`` of a model too big to run still works)."""
        if self._loaded is None:
            require_memory(self._shapes, 8 + self.dtype.itemsize)  # drawn, then cast
            initial = rnnc.init_params(self.analysis, seed=0)
            self._loaded = {k: v.astype(self.dtype) for k, v in initial.items()}
        return self._loaded

    def load_params(self, params: Mapping[str, np.ndarray]) -> None:
        checked = rnnc.check_params(params, self._shapes, dtype=self.dtype)
        self._loaded = {k: np.asarray(v, dtype=self.dtype) for k, v in checked.items()}

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._params.items()}

    def _outputs(self, inputs: Mapping[str, Any], options: RunOptions) -> dict[str, np.ndarray]:
        return self._run(inputs, options)[0]  # type: ignore[no-any-return]

    def _value_and_grad(
        self, inputs: Mapping[str, Any], loss: Loss, options: RunOptions
    ) -> tuple[float, dict[str, np.ndarray]]:
        outputs, saved, inputs_, lengths_ = self._run(inputs, options)
        value, cotangents = loss(outputs)
        grads = self._backward(self._params, inputs_, lengths_, saved, cotangents, self.dtype)
        return value, {k: v for k, v in grads.items() if k in self._shapes or k in inputs}

    def _run(self, inputs: Mapping[str, Any], options: RunOptions) -> tuple[Any, ...]:
        """The forward pass: outputs, what backward needs, and the prepared inputs."""
        inputs_, lengths_, masks = options.prepare(self.analysis, inputs)
        dropout = dropout_generator(options.mode, options.dropout_seed)
        outputs, saved = self._forward(self._params, inputs_, lengths_, self.dtype, masks, dropout)
        return outputs, saved, inputs_, lengths_


class NumpyBackend:
    """The entry point ``rnnc.backends: numpy``."""

    name = "numpy"

    def compile(self, analysis: Analysis, dtype: str = "float32", **options: Any) -> NumpyModel:
        if options:
            raise RnncError(f"the numpy backend takes no options {sorted(options)}")
        return NumpyModel(analysis, dtype)


BACKEND = NumpyBackend()
