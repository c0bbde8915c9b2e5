"""Small helpers shared by the tests."""

from __future__ import annotations

import textwrap


def spec_text(text: str) -> str:
    """Dedent a spec written inline in a test."""
    return textwrap.dedent(text).lstrip("\n")
