"""rnnc.front.equations and rnnc.front.cells: the cell language and the built-in library."""

from __future__ import annotations

import pytest

from rnnc.front.cells import builtin_cells
from rnnc.front.equations import (
    MAX_EQUATION_CHARS,
    MAX_NESTING,
    Binary,
    Cell,
    MatMul,
    Ref,
    parse_cell,
)

# The parameter names of the built-in cells are part of the contract (DESIGN.md).
CONTRACT = {
    "rnn": ["W", "b"],
    "rnn_relu": ["W", "b"],
    "lstm": ["W_i", "b_i", "W_f", "b_f", "W_g", "b_g", "W_o", "b_o"],
    "lstm_peephole": ["W_i", "p_i", "b_i", "W_f", "p_f", "b_f", "W_g", "b_g", "W_o", "p_o", "b_o"],
    "lstm_cifg": ["W_f", "b_f", "W_g", "b_g", "W_o", "b_o"],
    "gru": ["W_r", "b_r", "W_z", "b_z", "W_in", "b_in", "W_hn", "b_hn"],
    "gru_reset_before": ["W_r", "b_r", "W_z", "b_z", "W_n", "b_n"],
}


def parse(
    equations: dict[str, str], state: tuple[str, ...] = ("h",), output: str | None = None
) -> Cell:
    cell, errors = parse_cell("test", state, equations, output)
    assert cell is not None, [str(e) for e in errors]
    return cell


def error_of(equations: dict[str, str], state: tuple[str, ...] = ("h",), output: str | None = None):
    cell, errors = parse_cell("test", state, equations, output)
    assert cell is None and errors
    return errors[0]


def test_builtin_cells_have_the_contract_names() -> None:
    cells = builtin_cells()
    assert list(cells) == list(CONTRACT)
    for name, params in CONTRACT.items():
        assert [p.name for p in cells[name].params] == params, name


@pytest.mark.parametrize(
    ("name", "X", "H", "expected"),
    [
        ("rnn", 3, 5, {"W": (5, 8), "b": (5,)}),
        ("lstm", 3, 5, {"W_i": (5, 8), "b_i": (5,), "W_o": (5, 8)}),
        ("lstm_peephole", 3, 5, {"p_i": (5,), "p_o": (5,), "W_f": (5, 8)}),
        ("gru", 3, 5, {"W_r": (5, 8), "W_in": (5, 3), "W_hn": (5, 5), "b_hn": (5,)}),
        ("gru_reset_before", 3, 5, {"W_n": (5, 8), "b_n": (5,)}),
    ],
)
def test_parameter_shapes(name: str, X: int, H: int, expected: dict[str, tuple[int, ...]]) -> None:
    shapes = builtin_cells()[name].param_shapes(X, H)
    for param, shape in expected.items():
        assert shapes[param] == shape


def test_lstm_parameter_count_matches_the_textbook_formula() -> None:
    X, H = 7, 11
    total = sum(
        int.__mul__(*s) if len(s) == 2 else s[0]
        for s in builtin_cells()["lstm"].param_shapes(X, H).values()
    )
    assert total == 4 * (H * (X + H) + H)


def test_state_means_old_value_until_assigned_and_new_after() -> None:
    cell = builtin_cells()["lstm_peephole"]
    eq = {e.target: e for e in cell.equations}
    # i, f read the previous c; o is written after c and reads the new c.
    assert Ref("c", "previous") in _refs(eq["i"].expr)
    assert Ref("c", "local") in _refs(eq["o"].expr)
    assert Ref("c", "previous") in _refs(eq["c"].expr)


def _refs(expr):
    if isinstance(expr, Ref):
        yield expr
    for child in getattr(expr, "__dict__", {}).values():
        if isinstance(child, tuple):
            for part in child:
                yield from _refs(part)
        elif hasattr(child, "__dataclass_fields__"):
            yield from _refs(child)


def test_operators_and_concatenation_parse_to_the_ir() -> None:
    cell = parse({"h": "tanh(W @ [x, h] - -b * 2)"})
    body = cell.equations[0].expr
    assert body.function == "tanh"
    assert isinstance(body.arg, Binary) and body.arg.op == "-"
    assert isinstance(body.arg.left, MatMul) and body.arg.left.param == "W"


def test_output_defaults_to_h_and_can_be_named() -> None:
    assert parse({"h": "tanh(W @ [x, h])"}).output == "h"
    cell = parse({"c": "c + W @ x", "a": "tanh(c)"}, state=("a", "c"), output="a")
    assert cell.output == "a"


@pytest.mark.parametrize(
    ("equation", "column", "words"),
    [
        ("__import__('os')", 0, "'__import__'"),
        ("tanh(x.T)", 5, "attributes"),
        ("tanh(h[0])", 5, "subscripts"),
        ("h ** 2", 2, "'**' is not allowed"),
        ("h / 2", 2, "'/' is not allowed"),
        ("sigmod(W @ x)", 0, "did you mean 'sigmoid'"),
        ("tanh(W @ x, h)", 0, "exactly one argument"),
        ("(lambda: 1)()", 1, "lambdas"),
        ("tanh('x')", 5, "only numbers"),
        ("h if h else x", 0, "conditional"),
        ("tanh(W @ x) +", 13, "invalid syntax"),
        ("exec(h)", 0, "unknown function 'exec'"),
        ("os.system(h)", 0, "only the functions"),
        ("tanh(W @ x) + (h, h)", 14, "tuples"),
        ("h + 1e999", 4, "finite"),
        ("W @ 2", 4, "not a number"),
        ("h @ x", 0, "must be a parameter"),
        ("tanh", 0, "is a function"),
        ("h + True", 4, "only numbers"),
    ],
)
def test_refused_constructs_point_at_the_column(equation: str, column: int, words: str) -> None:
    error = error_of({"h": equation})
    assert words in error.message
    assert error.equation == "h"
    assert error.col == column


def test_column_counts_leading_spaces() -> None:
    assert error_of({"h": "   h ** 2"}).col == 5


def test_used_before_assigned() -> None:
    error = error_of({"h": "tanh(W @ x + g)", "g": "sigmoid(U @ x)"})
    assert "used before it is assigned" in error.message and error.col == 13


def test_state_never_assigned() -> None:
    error = error_of({"h": "tanh(W @ [x, h])"}, state=("h", "c"))
    assert error.field == "state" and "'c' is never assigned" in error.message


def test_output_must_be_a_state() -> None:
    assert "not a state" in error_of({"a": "tanh(W @ [x, a])"}, state=("a",)).message
    assert error_of({"h": "tanh(W @ x)"}, output="g").field == "output"


def test_matrix_and_vector_uses_of_one_name_conflict() -> None:
    assert "used as a vector" in error_of({"h": "tanh(W @ x + W)"}).message
    assert "multiplies operands of different widths" in error_of({"h": "W @ x + W @ h"}).message


def test_widths_that_never_fit_are_refused_at_once() -> None:
    error = error_of({"h": "tanh([x, h] + h)"})
    assert "never have the same width" in error.message and error.col == 12


def test_widths_that_fit_only_some_sizes_are_checked_per_size() -> None:
    cell = parse({"h": "tanh(W @ h + b) + x"})
    assert cell.check_sizes(4, 4) == []
    (problem,) = cell.check_sizes(3, 4)
    assert problem.equation == "h" and "input size 3 and hidden size 4" in problem.message


def test_cannot_assign_input_or_functions_or_assigned_parameters() -> None:
    assert "cell input" in error_of({"x": "tanh(h)", "h": "x"}).message
    assert "is a function" in error_of({"tanh": "h", "h": "x"}).message
    # A later equation's name is not a parameter, even where it is read too early.
    assert "used before it is assigned" in error_of({"g": "sigmoid(b)", "b": "g", "h": "b"}).message


def test_own_name_in_a_non_state_equation() -> None:
    assert "used in its own equation" in error_of({"g": "g + h", "h": "g"}).message


def test_caps_apply_before_parsing() -> None:
    long = "h + " * (MAX_EQUATION_CHARS // 4) + "h"
    assert "too long" in error_of({"h": long}).message
    deep = "(" * (MAX_NESTING + 1) + "h" + ")" * (MAX_NESTING + 1)
    assert "nested too deeply" in error_of({"h": deep}).message
    assert "not allowed in an equation" in error_of({"h": "tanh(h) + é"}).message


def test_all_errors_of_a_cell_are_collected() -> None:
    cell, errors = parse_cell("bad", ["h", "c"], {"g": "h ** 2", "h": "sigmod(g)"}, None)
    assert cell is None
    assert {e.equation for e in errors if e.equation} == {"g", "h"}
    assert any(e.field == "state" for e in errors)


def test_never_evaluates_user_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec must never run")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    parse({"h": "tanh(W @ [x, h] + b)"})
    error_of({"h": "__import__('os').system('true')"})


@pytest.mark.parametrize("name", list(CONTRACT))
def test_printed_expressions_parse_back_to_the_same_ir(name: str) -> None:
    from rnnc.front.equations import format_expr

    cell = builtin_cells()[name]
    printed = {eq.target: format_expr(eq.expr) for eq in cell.equations}
    again = parse(printed, state=cell.state, output=cell.output)
    assert [eq.expr for eq in again.equations] == [eq.expr for eq in cell.equations]
    assert again.params == cell.params


def test_a_value_no_later_equation_reads_is_refused_by_name() -> None:
    equations = {"u": "W_u @ [x, h]", "v": "tanh(b)", "h": "tanh(u)"}
    cell, errors = parse_cell("cell", ["h"], equations, None)
    assert cell is None
    assert [e.equation for e in errors] == ["v"]
    assert "'v' is assigned but never used" in str(errors[0])
    assert "remove it" in str(errors[0])
    # read by a later equation, a state, or the output: all fine
    assert parse_cell("cell", ["h"], {"u": "W_u @ [x, h]", "h": "tanh(u)"}, None)[1] == []
    assert parse_cell("cell", ["h", "c"], {"c": "tanh(b)", "h": "tanh(W @ [x, h])"}, None)[1] == []


def test_a_forgotten_matmul_is_named() -> None:
    _, errors = parse_cell("cell", ["h"], {"h": "tanh(W_h [x, h] + b)"}, None)
    assert "did you mean 'W_h @ [x, h]'?" in str(errors[0])
    _, errors = parse_cell("cell", ["h"], {"h": "tanh(U x)"}, None)  # no brackets: invalid syntax
    assert errors
