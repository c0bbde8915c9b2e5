"""The functions of the cell language, each declared once.

A :class:`Function` holds its value and its slope as :class:`Term` trees over a few
elementwise primitives (:class:`Prim`); a target (NumPy, PyTorch, C) writes any term
from its table of primitives (:class:`Renderer`), so adding a function to the language
is one entry in :data:`FUNCTIONS`: the parser, the reverse pass and every backend read
it from here. A target may still write a whole function its own way where it has a
faster kernel (torch's ``torch.sigmoid``): an entry of its ``functions`` table.

NOTE: slopes are written in terms of ``y = f(a)`` alone: the forward step keeps every
function's value for the reverse, never its argument (a test holds every entry to
it). Kinks take the slope of the side the compare picks: relu'(0) = 0, and
hard_sigmoid' is 0 where it is clipped, as PyTorch and ONNX have them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Prim(StrEnum):
    """The elementwise primitives terms are made of."""

    A = "a"  # the argument (only in values)
    Y = "y"  # the function's value, f(a) (only in slopes)
    CONST = "const"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    NEG = "neg"
    ABS = "abs"
    EXP = "exp"
    TANH = "tanh"
    MAX = "max"
    CLIP = "clip"  # clip(a, low, high)
    GT = "gt"  # a > b, a truth value
    LT = "lt"
    AND = "and"
    SELECT = "select"  # select(c, a, b): a where c, else b


@dataclass(frozen=True)
class Term:
    """An elementwise expression over :class:`Prim`; Python's operators build it."""

    prim: Prim
    args: tuple[Term, ...] = ()
    value: float = 0.0  # of a CONST

    def __add__(self, other: Term | float) -> Term:
        return Term(Prim.ADD, (self, _term(other)))

    def __radd__(self, other: float) -> Term:
        return Term(Prim.ADD, (_term(other), self))

    def __sub__(self, other: Term | float) -> Term:
        return Term(Prim.SUB, (self, _term(other)))

    def __rsub__(self, other: float) -> Term:
        return Term(Prim.SUB, (_term(other), self))

    def __mul__(self, other: Term | float) -> Term:
        return Term(Prim.MUL, (self, _term(other)))

    def __rmul__(self, other: float) -> Term:
        return Term(Prim.MUL, (_term(other), self))

    def __truediv__(self, other: Term | float) -> Term:
        return Term(Prim.DIV, (self, _term(other)))

    def __rtruediv__(self, other: float) -> Term:
        return Term(Prim.DIV, (_term(other), self))

    def __neg__(self) -> Term:
        return Term(Prim.NEG, (self,))

    def __gt__(self, other: Term | float) -> Term:  # type: ignore[override]
        return Term(Prim.GT, (self, _term(other)))

    def __lt__(self, other: Term | float) -> Term:  # type: ignore[override]
        return Term(Prim.LT, (self, _term(other)))

    def __and__(self, other: Term) -> Term:
        return Term(Prim.AND, (self, other))

    def prims(self) -> set[Prim]:
        """Every primitive this term uses."""
        found = {self.prim}
        for arg in self.args:
            found |= arg.prims()
        return found


def _term(x: Term | float) -> Term:
    return x if isinstance(x, Term) else Term(Prim.CONST, value=float(x))


def exp(t: Term) -> Term:
    return Term(Prim.EXP, (t,))


def tanh(t: Term) -> Term:
    return Term(Prim.TANH, (t,))


def absolute(t: Term) -> Term:
    return Term(Prim.ABS, (t,))


def maximum(t: Term, other: Term | float) -> Term:
    return Term(Prim.MAX, (t, _term(other)))


def clip(t: Term, low: float, high: float) -> Term:
    return Term(Prim.CLIP, (t, _term(low), _term(high)))


def select(condition: Term, then: Term | float, otherwise: Term | float) -> Term:
    return Term(Prim.SELECT, (condition, _term(then), _term(otherwise)))


a = Term(Prim.A)
y = Term(Prim.Y)


@dataclass(frozen=True)
class Function:
    """A function of the cell language: ``value`` in terms of ``a``; ``slope``, its
    derivative, in terms of ``y = value``."""

    name: str
    math: str  # as the docs write it
    value: Term
    slope: Term


def _functions(*functions: Function) -> dict[str, Function]:
    return {f.name: f for f in functions}


# fmt: off
FUNCTIONS: Mapping[str, Function] = _functions(
    Function("sigmoid", "1 / (1 + exp(-a))", 1.0 / (1.0 + exp(-a)), y * (1.0 - y)),
    Function("tanh", "tanh(a)", tanh(a), 1.0 - y * y),
    Function("relu", "max(a, 0)", maximum(a, 0.0), select(y > 0.0, 1.0, 0.0)),
    Function(
        "hard_sigmoid", "clip(0.2 a + 0.5, 0, 1) (ONNX HardSigmoid's defaults)",
        clip(0.2 * a + 0.5, 0.0, 1.0), select((y > 0.0) & (y < 1.0), 0.2, 0.0),
    ),
    Function("softsign", "a / (1 + |a|)", a / (1.0 + absolute(a)),
             (1.0 - absolute(y)) * (1.0 - absolute(y))),
    Function("identity", "a", a, Term(Prim.CONST, value=1.0)),
)
# fmt: on


# --- writing terms for a target ----------------------------------------------------------

# A primitive's rule: (template, precedence of what it writes, the precedence each
# operand needs). Precedence: 4 an atom or a call, 3 unary minus, 2 a product or
# quotient, 1 a sum or difference, 0 a comparison (parenthesised wherever it is an
# operand). A template is a format string over the operands, or a function of the
# operands, the term and the atoms' text (for a rule that looks at what they are).
Template = str | Callable[[list[str], Term, Mapping[Prim, str]], str]
Rule = tuple[Template, int, tuple[int, ...]]


@dataclass(frozen=True)
class Renderer:
    """How a target writes terms: a :data:`Rule` per primitive; ``functions`` writes a
    whole function its own way (a format string of ``{a}``)."""

    prims: Mapping[Prim, Rule]
    literal: Callable[[float], str] = repr
    functions: Mapping[str, str] = field(default_factory=dict)

    def write(self, term: Term, a: str = "a", y: str = "y") -> tuple[str, int]:
        """``term`` as an expression of this target (``a`` and ``y`` being atoms) and
        its precedence."""
        if term.prim is Prim.A:
            return a, 4
        if term.prim is Prim.Y:
            return y, 4
        if term.prim is Prim.CONST:
            text = self.literal(term.value)
            return text, 4 if not text.startswith("-") else 3
        template, precedence, needs = self.prims[term.prim]
        operands = []
        for arg, need in zip(term.args, needs, strict=True):
            text, level = self.write(arg, a, y)
            operands.append(f"({text})" if level < need else text)
        if isinstance(template, str):
            return template.format(*operands), precedence
        return template(operands, term, {Prim.A: a, Prim.Y: y}), precedence

    def value(self, function: str, a: str) -> tuple[str, int]:
        """``function(a)``: the target's own way, else its value term."""
        own = self.functions.get(function)
        if own is not None:
            return own.format(a=a), 4
        return self.write(FUNCTIONS[function].value, a=a)

    def slope(self, function: str, y: str) -> tuple[str, int]:
        """``function'(a)``, from ``y = function(a)``."""
        return self.write(FUNCTIONS[function].slope, y=y)


_ARITHMETIC: dict[Prim, Rule] = {
    Prim.ADD: ("{0} + {1}", 1, (1, 2)),
    Prim.SUB: ("{0} - {1}", 1, (1, 2)),
    Prim.MUL: ("{0} * {1}", 2, (2, 3)),
    Prim.DIV: ("{0} / {1}", 2, (2, 3)),
    Prim.NEG: ("-{0}", 3, (3,)),
    Prim.GT: ("{0} > {1}", 0, (1, 1)),
    Prim.LT: ("{0} < {1}", 0, (1, 1)),
}

NUMPY = Renderer(
    {
        **_ARITHMETIC,
        Prim.ABS: ("np.abs({0})", 4, (0,)),
        Prim.EXP: ("np.exp({0})", 4, (0,)),
        Prim.TANH: ("np.tanh({0})", 4, (0,)),
        Prim.MAX: ("np.maximum({0}, {1})", 4, (0, 0)),
        Prim.CLIP: ("np.clip({0}, {1}, {2})", 4, (0, 0, 0)),
        Prim.AND: ("({0}) & ({1})", 4, (0, 0)),
        Prim.SELECT: ("np.where({0}, {1}, {2})", 4, (0, 0, 0)),
    },
)


def _torch_select(operands: list[str], term: Term, atoms: Mapping[Prim, str]) -> str:
    """torch.where, except between two numbers: ``torch.where(c, 0.2, 0.0)`` would be a
    tensor of torch's default dtype (float32 in a float64 model), so the truth value is
    cast to the dtype of what it compares instead (``0.2 * (y > 0).to(y.dtype)``)."""
    condition, then, otherwise = operands
    if any(arg.prim is not Prim.CONST for arg in term.args[1:]):
        return f"torch.where({condition}, {then}, {otherwise})"
    like = atoms[next(_atoms(term.args[0]))]
    scaled = f"({condition}).to({like}.dtype)"
    high, low = term.args[1].value, term.args[2].value
    if high - low != 1.0:
        scaled = f"{high - low!r} * {scaled}"
    return scaled if low == 0.0 else f"{low!r} + {scaled}"


def _atoms(term: Term) -> Iterator[Prim]:
    """The atoms (``a``, ``y``) a term reads, in order."""
    if term.prim in (Prim.A, Prim.Y):
        yield term.prim
    for arg in term.args:
        yield from _atoms(arg)


TORCH = Renderer(
    {
        **NUMPY.prims,
        Prim.ABS: ("torch.abs({0})", 4, (0,)),
        Prim.EXP: ("torch.exp({0})", 4, (0,)),
        Prim.TANH: ("torch.tanh({0})", 4, (0,)),
        Prim.MAX: ("torch.clamp_min({0}, {1})", 4, (0, 0)),
        Prim.CLIP: ("torch.clamp({0}, {1}, {2})", 4, (0, 0, 0)),
        Prim.SELECT: (_torch_select, 4, (0, 0, 0)),
    },
    functions={"sigmoid": "torch.sigmoid({a})", "relu": "torch.relu({a})"},
)


def c_renderer(real: str) -> Renderer:
    """C for ``real`` (``float`` or ``double``): literals cast to it, libm's functions
    of that type."""
    f = "f" if real == "float" else ""

    def literal(value: float) -> str:
        text = repr(float(value))
        if text in ("inf", "-inf", "nan"):
            raise ValueError(f"no C literal for {text}")
        if "." not in text and "e" not in text:
            text += ".0"
        return f"(({real}){text}{f})"

    return Renderer(
        {
            **_ARITHMETIC,
            Prim.ABS: (f"fabs{f}({{0}})", 4, (0,)),
            Prim.EXP: (f"exp{f}({{0}})", 4, (0,)),
            Prim.TANH: (f"tanh{f}({{0}})", 4, (0,)),
            Prim.MAX: ("({0} > {1} ? {0} : {1})", 4, (1, 1)),
            Prim.CLIP: ("({0} < {1} ? {1} : ({0} > {2} ? {2} : {0}))", 4, (1, 1, 1)),
            Prim.AND: ("({0} && {1})", 4, (0, 0)),
            Prim.SELECT: ("({0} ? {1} : {2})", 4, (0, 0, 0)),
        },
        literal=literal,
    )
