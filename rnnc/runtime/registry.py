"""The backend registry: backends are found by name through entry points.

This is the one place in rnnc that knows backends exist. A backend package
declares ``[project.entry-points."rnnc.backends"] NAME = "module:Backend"``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from rnnc.errors import RnncError, did_you_mean
from rnnc.runtime.compiled import Backend

GROUP = "rnnc.backends"


def available_backends() -> list[str]:
    """Names of the installed backends, sorted."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def usable_backends() -> list[str]:
    """The installed backends whose own requirements are met (the torch backend needs
    PyTorch, an optional extra): the ones verify, bench and the demo run by default."""
    usable = []
    for name in available_backends():
        ready = getattr(load_backend(name), "ready", None)
        if ready is None or ready():
            usable.append(name)
    return usable


def load_backend(name: str) -> Backend:
    """The backend object registered under ``name`` (imported only now)."""
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            backend = ep.load()
            if not isinstance(backend, Backend):
                raise RnncError(f"the entry point {ep.value!r} of backend {name!r} is no Backend")
            return backend
    names = available_backends()
    raise RnncError(
        f"unknown backend {name!r}{did_you_mean(name, names)}; installed: {', '.join(names) or 'none'}"
    )
