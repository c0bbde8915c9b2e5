"""The cell equation language: text -> a small typed IR, never ``eval``.

A cell is a list of equations ``name: expression`` run in order. ``x`` is the cell
input; a state name means its previous value until an equation assigns it and its
new value after; every other free name is a parameter. The grammar is Python's
expression grammar cut down by an allow-list of AST nodes:

    expr := expr (+ | - | *) expr | PARAM @ expr | -expr | [expr, ...]
          | FUNCTION(expr) | NAME | NUMBER

``@`` multiplies by a parameter matrix of shape (hidden, width of its right side);
any other parameter is a vector of the hidden size; ``[a, b]`` concatenates.

Widths are tracked symbolically as ``a * input + b * hidden`` so a cell can be
checked before the sizes it will run with are known; :meth:`Cell.check_sizes` then
checks the equalities that only some sizes satisfy.
"""

from __future__ import annotations

import ast
import difflib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rnnc.errors import did_you_mean, one_of
from rnnc.front import functions

# The functions of the language, elementwise: each declared once in rnnc.front.functions.
FUNCTIONS = tuple(functions.FUNCTIONS)
INPUT = "x"
MAX_EQUATION_CHARS = 1000
MAX_NESTING = 24
MAX_NODES = 1000


# --- widths ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Width:
    """A symbolic vector width: ``inputs * X + hiddens * H``."""

    inputs: int
    hiddens: int

    def __add__(self, other: Width) -> Width:
        return Width(self.inputs + other.inputs, self.hiddens + other.hiddens)

    def size(self, input_size: int, hidden: int) -> int:
        return self.inputs * input_size + self.hiddens * hidden

    def can_equal(self, other: Width) -> bool:
        """Whether some input size >= 1 and hidden size >= 1 make the two equal."""
        di, dh = self.inputs - other.inputs, self.hiddens - other.hiddens
        return (di == 0 and dh == 0) or di * dh < 0

    def describe(self) -> str:
        parts = []
        for count, word in ((self.inputs, "input"), (self.hiddens, "hidden")):
            if count:
                parts.append(word if count == 1 else f"{count}*{word}")
        return " + ".join(parts) or "0"


X_WIDTH = Width(1, 0)
H_WIDTH = Width(0, 1)


# --- the IR ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Ref:
    """A name in an expression.

    kind: ``input`` (x), ``previous`` (a state before this step assigns it), ``local``
    (assigned earlier in this step, new states included), ``param`` (a vector).
    """

    name: str
    kind: Literal["input", "previous", "local", "param"]


@dataclass(frozen=True)
class Call:
    function: str
    arg: Expr


@dataclass(frozen=True)
class Binary:
    op: Literal["+", "-", "*"]
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg:
    operand: Expr


@dataclass(frozen=True)
class MatMul:
    """``param @ operand`` with a (hidden, width(operand)) matrix parameter."""

    param: str
    operand: Expr


@dataclass(frozen=True)
class Concat:
    parts: tuple[Expr, ...]


Expr = Num | Ref | Call | Binary | Neg | MatMul | Concat


@dataclass(frozen=True)
class Equation:
    target: str
    expr: Expr
    text: str
    width: Width


@dataclass(frozen=True)
class Param:
    """A parameter: a matrix (hidden, operand width) or a vector (hidden,)."""

    name: str
    kind: Literal["matrix", "vector"]
    operand: Width | None = None

    def shape(self, input_size: int, hidden: int) -> tuple[int, ...]:
        if self.kind == "matrix":
            assert self.operand is not None
            return (hidden, self.operand.size(input_size, hidden))
        return (hidden,)


@dataclass(frozen=True)
class _SizeRule:
    """Two widths that must be equal once sizes are known (they can be, for some)."""

    equation: str
    col: int
    left: Width
    right: Width
    what: str


@dataclass(frozen=True)
class Cell:
    """A parsed cell: equations in order, its states, output and parameters."""

    name: str
    state: tuple[str, ...]
    output: str
    equations: tuple[Equation, ...]
    params: tuple[Param, ...]
    size_rules: tuple[_SizeRule, ...] = ()

    def param_shapes(self, input_size: int, hidden: int) -> dict[str, tuple[int, ...]]:
        return {p.name: p.shape(input_size, hidden) for p in self.params}

    def check_sizes(self, input_size: int, hidden: int) -> list[EquationError]:
        """The equations whose widths do not fit for these sizes."""
        problems = []
        texts = {eq.target: eq.text for eq in self.equations}
        for rule in self.size_rules:
            left, right = rule.left.size(input_size, hidden), rule.right.size(input_size, hidden)
            if left != right:
                problems.append(
                    EquationError(
                        f"{rule.what} do not fit with input size {input_size} and hidden size "
                        f"{hidden} (widths {left} and {right})",
                        rule.equation,
                        rule.col,
                        text=texts[rule.equation],
                    )
                )
        return problems

    def format(self) -> str:
        lines = [f"{self.name}:  state {', '.join(self.state)}; output {self.output}"]
        lines += [f"  {eq.target} = {eq.text}" for eq in self.equations]
        return "\n".join(lines)


@dataclass
class EquationError(Exception):
    """A problem in one equation (or in the cell as a whole when ``equation`` is None).

    ``col`` is a 0-based offset into the equation text.
    """

    message: str
    equation: str | None = None
    col: int | None = None
    field: Literal["equations", "state", "output"] = "equations"
    text: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass
class _Scope:
    state: tuple[str, ...]
    assigned: list[str]
    later: set[str]
    params: dict[str, Param] = field(default_factory=dict)
    widths: dict[str, Width] = field(default_factory=dict)
    rules: list[_SizeRule] = field(default_factory=list)


def parse_cell(
    name: str,
    state: Sequence[str],
    equations: Mapping[str, str],
    output: str | None = None,
) -> tuple[Cell | None, list[EquationError]]:
    """Parse a cell; return it (None if any error) and every problem found."""
    errors: list[EquationError] = []
    state = tuple(state)
    scope = _Scope(state, [], set(equations))
    parsed: list[Equation] = []
    for target, text in equations.items():
        try:
            parsed.append(_parse_equation(target, text, scope))
        except EquationError as exc:
            exc.equation, exc.text = target, text
            errors.append(exc)
        scope.assigned.append(target)
        scope.later.discard(target)

    for s in state:
        if s not in equations and s != INPUT:
            errors.append(
                EquationError(
                    f"state {s!r} is never assigned: add an equation '{s}: ...'", field="state"
                )
            )
        if s == INPUT:
            errors.append(
                EquationError("'x' is the cell input and cannot be a state", field="state")
            )
    chosen = output if output is not None else "h"
    if chosen not in state:
        where: Literal["output", "state"] = "output" if output is not None else "state"
        hint = "" if output is not None else "; name the state the cell outputs with 'output:'"
        errors.append(
            EquationError(
                f"the output {chosen!r} is not a state (states: {', '.join(map(repr, state))}){hint}",
                field=where,
            )
        )
    if not errors:
        errors += _unused(parsed, state, chosen, scope, equations)
    if errors:
        return None, errors
    return (
        Cell(name, state, chosen, tuple(parsed), tuple(scope.params.values()), tuple(scope.rules)),
        [],
    )


def _unused(
    parsed: list[Equation],
    state: tuple[str, ...],
    output: str,
    scope: _Scope,
    equations: Mapping[str, str],
) -> list[EquationError]:
    """Values assigned and never read: not a state, not the output, and no later
    equation reads them (a typo in a later equation makes a name a learned parameter
    instead: say which one looks like it)."""
    read = {ref.name for eq in parsed for ref in _refs(eq.expr) if ref.kind == "local"}
    errors = []
    for eq in parsed:
        if eq.target in state or eq.target == output or eq.target in read:
            continue
        close = difflib.get_close_matches(eq.target, list(scope.params), n=1, cutoff=0.75)
        hint = (
            f"; did you mean {eq.target!r} where an equation reads {close[0]!r} (which is "
            "therefore a learned parameter)?"
            if close
            else "; use it in a later equation, make it a state, or remove it"
        )
        error = EquationError(
            f"{eq.target!r} is assigned but never used: it is not a state and no later "
            f"equation reads it{hint}"
        )
        error.equation, error.text = eq.target, equations[eq.target]
        errors.append(error)
    return errors


def _refs(expr: Expr) -> list[Ref]:
    """Every name an expression reads."""
    if isinstance(expr, Ref):
        return [expr]
    if isinstance(expr, Call):
        return _refs(expr.arg)
    if isinstance(expr, Neg):
        return _refs(expr.operand)
    if isinstance(expr, Binary):
        return _refs(expr.left) + _refs(expr.right)
    if isinstance(expr, MatMul):
        return _refs(expr.operand)
    if isinstance(expr, Concat):
        return [ref for part in expr.parts for ref in _refs(part)]
    return []


def _parse_equation(target: str, text: str, scope: _Scope) -> Equation:
    if target == INPUT:
        raise EquationError("'x' is the cell input; it cannot be assigned")
    if target in FUNCTIONS:
        raise EquationError(f"{target!r} is a function; it cannot be assigned")
    if not isinstance(text, str) or not text.strip():
        raise EquationError("the equation is empty", col=0)
    _check_caps(text)
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        stripped = text.strip()
        offset = exc.offset - 1 if exc.offset and exc.offset >= 1 else len(stripped)
        col = min(offset, len(stripped)) + (len(text) - len(text.lstrip()))
        raise EquationError(f"invalid syntax: {exc.msg}", col=col) from None
    except (RecursionError, MemoryError, ValueError):
        raise EquationError("the equation is too complex", col=0) from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise EquationError(f"the equation has too many parts (over {MAX_NODES})", col=0)
    lead = len(text) - len(text.lstrip())
    expr, width = _Translator(scope, lead, target, text.strip()).expr(tree.body)
    if width is None:
        raise EquationError("an equation must compute a vector, not a lone number", col=lead)
    if target in scope.state and width != H_WIDTH:
        if not width.can_equal(H_WIDTH):
            raise EquationError(
                f"state {target!r} must have the hidden width, but the expression has width "
                f"{width.describe()}",
                col=lead,
            )
        scope.rules.append(
            _SizeRule(target, lead, width, H_WIDTH, f"state {target!r} and the hidden size")
        )
        width = H_WIDTH
    scope.widths[target] = width
    return Equation(target, expr, text.strip(), width)


def _check_caps(text: str) -> None:
    if len(text) > MAX_EQUATION_CHARS:
        raise EquationError(
            f"the equation is too long (expected at most {MAX_EQUATION_CHARS} characters, found {len(text)})",
            col=MAX_EQUATION_CHARS,
        )
    depth = 0
    for i, char in enumerate(text):
        if not (char.isascii() and (char.isprintable() or char in " \t")):
            raise EquationError(f"character {char!r} is not allowed in an equation", col=i)
        if char in "([":
            depth += 1
            if depth > MAX_NESTING:
                raise EquationError(
                    f"brackets are nested too deeply (expected at most {MAX_NESTING})", col=i
                )
        elif char in ")]":
            depth = max(0, depth - 1)


_OPERATORS: dict[type[ast.operator], Literal["+", "-", "*"]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
}
_REFUSED_OPERATORS = {
    ast.Pow: "'**' is not allowed (write repeated products with '*')",
    ast.Div: "'/' is not allowed (multiply by a constant instead)",
    ast.FloorDiv: "'//' is not allowed",
    ast.Mod: "'%' is not allowed",
    ast.LShift: "'<<' is not allowed",
    ast.RShift: "'>>' is not allowed",
    ast.BitAnd: "'&' is not allowed",
    ast.BitOr: "'|' is not allowed",
    ast.BitXor: "'^' is not allowed",
}
_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.MatMult: "@",
    ast.Pow: "**",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
}
_REFUSED_NODES = {
    ast.Attribute: "attributes ('a.b') are not allowed",
    ast.Subscript: "subscripts ('a[i]') are not allowed; use a separate parameter instead",
    ast.Tuple: "tuples are not allowed; write [a, b] to concatenate",
    ast.Lambda: "lambdas are not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "'and'/'or' are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Dict: "dictionaries are not allowed",
    ast.Set: "sets are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.NamedExpr: "':=' is not allowed; write another equation",
    ast.JoinedStr: "strings are not allowed",
}


class _Translator:
    """Walks an allow-listed Python AST into the cell IR, tracking widths."""

    def __init__(self, scope: _Scope, lead: int, target: str, text: str):
        self.scope = scope
        self.lead = lead
        self.target = target
        self.text = text

    def fail(self, message: str, node: ast.AST) -> EquationError:
        return EquationError(message, col=self.lead + getattr(node, "col_offset", 0))

    def operator_col(self, node: ast.BinOp) -> int:
        """Where the operator of ``node`` is written (not where its left side starts)."""
        start = node.left.end_col_offset or node.col_offset
        gap = self.text[start : node.right.col_offset]
        symbol = _SYMBOLS.get(type(node.op), "")
        found = gap.find(symbol) if symbol else -1
        return self.lead + (start + found if found >= 0 else node.col_offset)

    def expr(self, node: ast.expr) -> tuple[Expr, Width | None]:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(f"only numbers are allowed as constants, found {value!r}", node)
            if isinstance(value, int) and abs(value) > 2**53:
                raise self.fail("integers must be at most 2**53 in size", node)
            if not math.isfinite(value):
                raise self.fail("numbers must be finite", node)
            return Num(float(value)), None
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                operand, width = self.expr(node.operand)
                return Neg(operand), width
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
            raise self.fail(f"'{_unary_symbol(node.op)}' is not allowed", node)
        if isinstance(node, ast.BinOp):
            return self.binary(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.List):
            if not node.elts:
                raise self.fail("an empty concatenation '[]' has no width", node)
            parts, total = [], Width(0, 0)
            for element in node.elts:
                part, width = self.expr(element)
                if width is None:
                    raise self.fail("a number cannot be concatenated; concatenate vectors", element)
                parts.append(part)
                total = total + width
            return Concat(tuple(parts)), total
        if isinstance(node, ast.Subscript) and isinstance(node.slice, (ast.Tuple, ast.Name)):
            inside = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            wanted = "[" + ", ".join(_source(e) for e in inside) + "]"
            raise self.fail(
                f"did you mean '{_source(node.value)} @ {wanted}'? (a matrix times a "
                "concatenation is written with '@'; subscripts are not allowed)",
                node,
            )
        for kind, message in _REFUSED_NODES.items():
            if isinstance(node, kind):
                raise self.fail(message, node)
        raise self.fail(f"'{type(node).__name__}' is not allowed in a cell equation", node)

    def name(self, node: ast.Name) -> tuple[Expr, Width | None]:
        name, scope = node.id, self.scope
        if name.startswith("__"):
            raise self.fail(f"{name!r}: names starting with '__' are not allowed", node)
        if name == INPUT:
            return Ref(name, "input"), X_WIDTH
        if name in scope.assigned:
            return Ref(name, "local"), scope.widths.get(name, H_WIDTH)
        if name in scope.state:
            return Ref(name, "previous"), H_WIDTH
        if name == self.target:
            raise self.fail(
                f"{name!r} is used in its own equation but is not a state "
                f"(states: {', '.join(map(repr, scope.state))})",
                node,
            )
        if name in scope.later:
            raise self.fail(
                f"{name!r} is used before it is assigned (equations run in order; move its equation up)",
                node,
            )
        if name in FUNCTIONS:
            raise self.fail(f"{name!r} is a function; call it as {name}(...)", node)
        known = scope.params.get(name)
        if known is not None and known.kind == "matrix":
            raise self.fail(
                f"{name!r} is a matrix (used left of '@' above); here it is used as a vector", node
            )
        scope.params.setdefault(name, Param(name, "vector"))
        return Ref(name, "param"), H_WIDTH

    def binary(self, node: ast.BinOp) -> tuple[Expr, Width | None]:
        if isinstance(node.op, ast.MatMult):
            return self.matmul(node)
        op = _OPERATORS.get(type(node.op))
        if op is None:
            message = _REFUSED_OPERATORS.get(type(node.op), "this operator is not allowed")
            raise EquationError(message, col=self.operator_col(node))
        left, left_width = self.expr(node.left)
        right, right_width = self.expr(node.right)
        width = right_width if left_width is None else left_width
        if left_width is not None and right_width is not None and left_width != right_width:
            what = f"the two sides of '{op}' ({_source(node.left)} and {_source(node.right)})"
            if not left_width.can_equal(right_width):
                raise EquationError(
                    f"{what} never have the same width "
                    f"({left_width.describe()} vs {right_width.describe()})",
                    col=self.operator_col(node),
                )
            self.scope.rules.append(
                _SizeRule(self.target, self.operator_col(node), left_width, right_width, what)
            )
        return Binary(op, left, right), width

    def matmul(self, node: ast.BinOp) -> tuple[Expr, Width | None]:
        matrix = node.left
        if not isinstance(matrix, ast.Name):
            raise self.fail("the left side of '@' must be a parameter name (a matrix)", matrix)
        name = matrix.id
        scope = self.scope
        if name == INPUT or name in scope.state or name in scope.assigned or name in scope.later:
            raise self.fail(
                f"the left side of '@' must be a parameter, but {name!r} is "
                f"{'the input' if name == INPUT else 'a value the cell computes'}",
                matrix,
            )
        if name in FUNCTIONS or name.startswith("__"):
            raise self.fail(f"{name!r} cannot be a parameter name", matrix)
        operand, width = self.expr(node.right)
        if width is None:
            raise self.fail("the right side of '@' must be a vector, not a number", node.right)
        known = scope.params.get(name)
        if known is None:
            scope.params[name] = Param(name, "matrix", width)
        elif known.kind == "vector":
            raise self.fail(
                f"{name!r} is a vector (used without '@' above); here it is a matrix", matrix
            )
        elif known.operand != width:
            raise self.fail(
                f"{name!r} multiplies operands of different widths "
                f"({known.operand.describe() if known.operand else '?'} above, {width.describe()} here)",
                matrix,
            )
        return MatMul(name, operand), H_WIDTH

    def call(self, node: ast.Call) -> tuple[Expr, Width | None]:
        if not isinstance(node.func, ast.Name):
            for kind, message in _REFUSED_NODES.items():
                if isinstance(node.func, kind) and kind is not ast.Attribute:
                    raise self.fail(message, node.func)
            raise self.fail(f"only the functions {one_of(FUNCTIONS)} can be called", node.func)
        function = node.func.id
        if function not in FUNCTIONS:
            raise self.fail(
                f"unknown function {function!r}{did_you_mean(function, FUNCTIONS)}; "
                f"functions: {', '.join(FUNCTIONS)}",
                node.func,
            )
        if node.keywords or len(node.args) != 1:
            raise self.fail(f"{function}() takes exactly one argument", node)
        arg, width = self.expr(node.args[0])
        if width is None:
            raise self.fail(f"{function}() needs a vector, not a number", node.args[0])
        return Call(function, arg), width


def _unary_symbol(op: ast.unaryop) -> str:
    return {ast.Not: "not", ast.Invert: "~"}.get(type(op), "?")


def _source(node: ast.expr) -> str:
    return ast.unparse(node)


def format_expr(expr: Expr) -> str:
    """The expression as equation text (a canonical, fully parenthesised form)."""
    if isinstance(expr, Num):
        return repr(int(expr.value)) if expr.value.is_integer() else repr(expr.value)
    if isinstance(expr, Ref):
        return expr.name
    if isinstance(expr, Call):
        return f"{expr.function}({format_expr(expr.arg)})"
    if isinstance(expr, Binary):
        return f"({format_expr(expr.left)} {expr.op} {format_expr(expr.right)})"
    if isinstance(expr, Neg):
        return f"-{format_expr(expr.operand)}"
    if isinstance(expr, MatMul):
        return f"{expr.param} @ {format_expr(expr.operand)}"
    return "[" + ", ".join(format_expr(p) for p in expr.parts) + "]"
