"""``rnnc.compile``: a spec -> a CompiledModel on a named backend."""

from __future__ import annotations

from typing import Any

from rnnc.errors import RnncError, SpecError
from rnnc.front.checks import Analysis, analyze
from rnnc.front.spec import Spec
from rnnc.runtime.compiled import CompiledModel
from rnnc.runtime.registry import load_backend

DTYPES = ("float32", "float64")


def compile(
    spec: Spec | Analysis, backend: str = "numpy", dtype: str = "float32", **options: Any
) -> CompiledModel:
    """Check ``spec`` and compile it with ``backend``; raise SpecError if it has errors.

    The result follows the CompiledModel interface (DESIGN.md): ``source``,
    ``param_shapes``, ``load_params``, ``params``, ``run`` and ``vjp``.
    """
    if dtype not in DTYPES:
        raise RnncError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
    analysis = spec if isinstance(spec, Analysis) else analyze(spec)
    if not analysis.ok:
        raise SpecError(analysis.errors)
    return load_backend(backend).compile(analysis, dtype=dtype, **options)
