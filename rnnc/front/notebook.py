"""How a spec or an analysis shows in Jupyter: as its drawing, once drawing is loaded.

The drawing code lives in :mod:`rnnc.tools.drawing` (it needs graphviz); the spec and the
checks must not import it, so their ``_repr_mimebundle_`` asks this module, which
knows nothing but the function ``rnnc.tools.drawing`` registers here when it is imported.
``import rnnc`` imports drawing when it runs inside IPython, so a notebook shows every
spec drawn; elsewhere nothing draws until asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Bundle = dict[str, Any]
_draw: list[Callable[[Any, str], Bundle]] = []  # the one registered, if any


def register(draw: Callable[[Any, str], Bundle]) -> None:
    """``draw(obj, view)`` makes the mime bundle of a spec or analysis from now on."""
    _draw[:] = [draw]


def mimebundle(obj: Any, view: str) -> Bundle:
    """The mime bundle of ``obj`` drawn in ``view``, or its text while nothing draws."""
    if not _draw:
        return {"text/plain": f"<rnnc {type(obj).__name__} (import rnnc.tools.drawing to draw it)>"}
    return _draw[0](obj, view)
