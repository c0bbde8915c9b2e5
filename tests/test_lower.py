"""rnnc.ir.lower's op kinds: every forward kind has a reverse rule, and every target writes
every kind it may meet (emit: those of a cell; the NumPy module: those of the network;
the C steps: the ones their plan admits)."""

from __future__ import annotations

from rnnc.backends import emit, native, numpy_backend, writer
from rnnc.front.cells import builtin_cells
from rnnc.ir import network
from rnnc.ir.lower import CELL_KINDS, REVERSE_RULES, OpKind, lower_cell, reverse

REVERSE_ONLY = {OpKind.MATMUL_T, OpKind.DCALL, OpKind.SLICE, OpKind.SUM_BATCH}


def test_every_forward_kind_has_a_reverse_rule() -> None:
    without = network.REVERSE_ONLY | network.WITHOUT_GRADIENT | {OpKind.CONST}
    assert set(REVERSE_RULES) == set(OpKind) - REVERSE_ONLY - without


def test_emit_writes_every_kind_of_a_cell() -> None:
    written = set(emit._LEAVES) | set(emit._RENDERINGS)
    assert written == CELL_KINDS
    assert not set(emit._LEAVES) & set(emit._RENDERINGS)


def test_the_numpy_module_writes_every_kind_of_the_network() -> None:
    written = set(writer.EXPRESSIONS) | set(numpy_backend.STATEMENTS)
    cell_only = {OpKind.X, OpKind.PREV, OpKind.XPROJ, OpKind.RPROJ, OpKind.FUSED}
    cell_only |= {OpKind.BROADCAST, OpKind.MATMUL, OpKind.MATMUL_T}
    assert written == set(OpKind) - cell_only
    assert not set(writer.EXPRESSIONS) & set(numpy_backend.STATEMENTS) - {OpKind.PACK}


def test_the_c_steps_write_every_kind_their_plan_admits() -> None:
    admitted = native.FORWARD_KINDS | native.REVERSE_KINDS
    assert admitted <= set(OpKind)
    # what the C steps leave to the array library: products, and slicing a concat
    assert CELL_KINDS - admitted == {OpKind.X, OpKind.CONCAT, OpKind.SLICE}


def test_the_built_in_cells_lower_to_known_kinds_and_reverse() -> None:
    for name, cell in builtin_cells().items():
        step = lower_cell(cell, 3, 4)
        adjoint = reverse(step)
        kinds = {op.kind for op in step.ops} | {op.kind for op in adjoint.ops}
        assert kinds <= set(OpKind), name
        assert all(isinstance(op.kind, OpKind) for op in (*step.ops, *adjoint.ops)), name
