"""rnnc: a compiler for recurrent neural networks.

    spec = rnnc.load_spec("specs/seq2seq_attention.yaml")
    for diagnostic in rnnc.check(spec):
        print(diagnostic)

See docs/spec.md for the spec language and docs/cells.md for cell equations.
"""

import sys
from typing import TYPE_CHECKING, Any

from rnnc.errors import Diagnostic, RnncError, SpecError
from rnnc.front.cells import builtin_cells
from rnnc.front.checks import Analysis, analyze, check
from rnnc.front.equations import Cell, parse_cell
from rnnc.front.graph import build_graph, unroll
from rnnc.front.parse import load_spec, parse_spec
from rnnc.front.spec import Spec
from rnnc.runtime.compiler import compile
from rnnc.runtime.decoding import Generation
from rnnc.runtime.weights import WeightsError, check_params, init_params, load_weights, save_weights
from rnnc.version import __version__

if TYPE_CHECKING:
    from rnnc.tools.drawing import render

if "IPython" in sys.modules:  # a notebook: specs and analyses show as their drawings
    import rnnc.tools.drawing  # noqa: F401 (registers the drawing with rnnc.front.notebook)


def __getattr__(name: str) -> Any:
    """``rnnc.render`` imports the drawing code (and graphviz) on first use only."""
    if name == "render":
        from rnnc.tools.drawing import render

        return render
    raise AttributeError(f"module 'rnnc' has no attribute {name!r}")


__all__ = [
    "Analysis",
    "Cell",
    "Diagnostic",
    "Generation",
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
