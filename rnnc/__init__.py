"""rnnc: a compiler for recurrent neural networks.

    spec = rnnc.load_spec("specs/seq2seq_attention.yaml")
    for diagnostic in rnnc.check(spec):
        print(diagnostic)

See docs/spec.md for the spec language and docs/cells.md for cell equations.
"""

from rnnc.cells import builtin_cells
from rnnc.checks import Analysis, analyze, check
from rnnc.compiler import compile
from rnnc.drawing import render
from rnnc.equations import Cell, parse_cell
from rnnc.errors import Diagnostic, RnncError, SpecError
from rnnc.graph import build_graph, unroll
from rnnc.parse import load_spec, parse_spec
from rnnc.spec import Spec
from rnnc.weights import WeightsError, check_params, init_params, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "Cell",
    "Diagnostic",
    "RnncError",
    "Spec",
    "SpecError",
    "WeightsError",
    "__version__",
    "analyze",
    "build_graph",
    "builtin_cells",
    "check",
    "check_params",
    "compile",
    "init_params",
    "load_spec",
    "load_weights",
    "parse_cell",
    "parse_spec",
    "render",
    "save_weights",
    "unroll",
]
