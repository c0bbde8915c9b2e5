"""``python -m rnnc.tools.gallery_pictures``: redraw docs/gallery (what ``make gallery`` runs).

Each gallery spec's unrolled diagram goes to ``docs/gallery/NAME.svg``, with the
SHA-256 of the DOT text it was laid out from recorded inside (an XML comment), so a
test can tell a stale picture without depending on the Graphviz version; and
``docs/gallery.md`` shows each spec beside its picture.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from rnnc.front.parse import load_spec
from rnnc.runtime.files import write_atomic
from rnnc.tools.drawing import encode, render


def picture(spec_path: Path) -> bytes:
    drawing = render(load_spec(spec_path), view="unrolled")
    digest = hashlib.sha256(drawing.source.encode("utf-8")).hexdigest()
    svg = encode(drawing, "svg")
    head, _, rest = svg.partition(b"\n")  # after the XML declaration
    return head + f"\n<!-- rnnc-dot-sha256: {digest} -->\n".encode() + rest


def page(specs: list[Path]) -> str:
    parts = [
        "# Gallery",
        "",
        "Every spec in `specs/`, beside its unrolled diagram (`rnnc render SPEC`). The",
        "pictures are drawn by `make gallery`; a test fails when one is out of date.",
        "`rnnc init NAME` starts a spec of your own from any of them.",
        "",
    ]
    for path in specs:
        text = path.read_text(encoding="utf-8").rstrip()
        parts += [
            f"## {path.stem}",
            "",
            "```yaml",
            text,
            "```",
            "",
            f"![{path.stem}, unrolled](gallery/{path.stem}.svg)",
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    specs = sorted(Path(args[0] if args else "specs").glob("*.yaml"))
    docs = Path(args[1] if len(args) > 1 else "docs")
    (docs / "gallery").mkdir(parents=True, exist_ok=True)
    for path in specs:
        write_atomic(docs / "gallery" / f"{path.stem}.svg", picture(path))
    write_atomic(docs / "gallery.md", page(specs))
    print(f"drew {len(specs)} pictures into {docs / 'gallery'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
