"""rnnc render: the three views, escaping, determinism, broken specs, output formats,
Jupyter display, and the gallery pictures in docs/ being up to date."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

import rnnc
from rnnc.tools.drawing import ERROR, encode, has_dot, label, render
from tests.conftest import GALLERY, ROOT
from tests.helpers import spec_text

GOLDEN = Path(__file__).parent / "golden"
needs_dot = pytest.mark.skipif(not has_dot(), reason="Graphviz's dot program is not installed")


def dot_accepts(source: str) -> bool:
    """Whether Graphviz parses the DOT text (and lays it out) without complaint."""
    done = subprocess.run(["dot", "-Tsvg"], input=source.encode(), capture_output=True, check=False)
    return done.returncode == 0 and not done.stderr


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
@pytest.mark.parametrize("view", ["rolled", "unrolled", "cell"])
def test_every_gallery_spec_draws_in_every_view(path: Path, view: str) -> None:
    drawing = render(rnnc.load_spec(path), view=view)
    assert isinstance(drawing, __import__("graphviz").Digraph)
    if has_dot():
        assert dot_accepts(drawing.source)


@pytest.mark.parametrize(
    ("spec", "view"),
    [
        ("seq2seq_attention", "unrolled"),
        ("seq2seq_attention", "rolled"),
        ("bidirectional_lstm", "unrolled"),
        ("peephole_lstm", "cell"),
    ],
)
def test_dot_text_is_the_golden_one(spec: str, view: str) -> None:
    """Same spec, same bytes; a change to a drawing is a decision seen in review
    (RNNC_UPDATE_GOLDEN=1 rewrites these files)."""
    source = render(rnnc.load_spec(ROOT / "specs" / f"{spec}.yaml"), view=view).source
    path = GOLDEN / f"{spec}_{view}.dot"
    if os.environ.get("RNNC_UPDATE_GOLDEN"):
        path.write_text(source)
    assert source == path.read_text()


def test_unrolled_shows_what_the_spec_says() -> None:
    source = render(rnnc.load_spec(ROOT / "specs" / "seq2seq_attention.yaml"), steps=3).source
    # Both directions of the encoder, each step, with opposite arrows and a merge.
    for t in range(3):
        assert f'"encoder.fwd.l0@{t}"' in source and f'"encoder.bwd.l0@{t}"' in source
        assert f'"encoder.l0·merge@{t}"' in source
    assert re.search(r'"encoder\.bwd\.l0@0" -> "encoder\.bwd\.l0@1" \[[^]]*dir=back', source)
    assert re.search(r'"encoder\.fwd\.l0@0" -> "encoder\.fwd\.l0@1" \[(?![^]]*dir=back)', source)
    # The bridge into the decoder's first step; teacher forcing dashed after step 0;
    # feedback dotted from the previous prediction.
    assert '"decoder·bridge" -> "decoder.fwd.l0@0"' in source
    assert re.search(r'"tgt@1" -> "decoder\.fwd\.l0@1" \[[^]]*style=dashed', source)
    assert re.search(r'"tgt@0" -> "decoder\.fwd\.l0@0" \[(?![^]]*style=dashed)', source)
    assert re.search(r'"decoder\.fwd\.l0@1" -> "out@0" \[[^]]*dir=back[^]]*style=dotted', source)
    # Encoder and decoder in clusters of their own.
    assert "subgraph cluster_src" in source and "subgraph cluster_tgt" in source


def test_attention_is_drawn_per_pair_or_bundled() -> None:
    spec = rnnc.load_spec(ROOT / "specs" / "seq2seq_luong.yaml")
    each = render(spec, steps=3, attention="each").source
    bundled = render(spec, steps=3, attention="bundled").source
    assert each.count("arrowhead=vee") > bundled.count("arrowhead=vee")
    assert "attention over" in bundled and "attention over" not in each


def test_many_to_one_draws_one_output() -> None:
    source = render(rnnc.load_spec(ROOT / "specs" / "sequence_classifier.yaml"), steps=5).source
    outputs = [n for n in re.findall(r'^\t"(outputs\.[^"]+)"', source, re.M)]
    assert len(set(outputs)) == 1


def test_long_sequences_are_elided_and_cost_nothing_more() -> None:
    text = """
    rnnc: 1
    name: deep
    inputs:
      x: {size: 4}
    layers:
      stack: {cell: lstm, hidden: 8, input: x, depth: 8, direction: bidirectional}
    outputs:
      y: {from: stack}
    """
    spec = rnnc.parse_spec(spec_text(text))
    long, short = render(spec, steps=10_000).source, render(spec, steps=7).source
    assert "x@9999" in long and "x@3" not in long and "⋯" in long
    assert long.count("\n") == short.count("\n")  # the same drawing, but for the labels


def test_labels_are_escaped() -> None:
    raw = 'a "quote", a back\\slash and <b>tags</b>'
    g = __import__("graphviz").Digraph()
    g.node("n", label=label(raw, "second line"))
    assert '\\"quote\\"' in g.source and "back\\\\slash" in g.source
    assert "label=<" not in g.source  # never read as an HTML-like label
    if has_dot():
        svg = subprocess.run(["dot", "-Tsvg"], input=g.source.encode(), capture_output=True).stdout
        assert b"back\\slash" in svg and b"&lt;b&gt;tags" in svg


BROKEN = """
rnnc: 1
name: broken
inputs:
  x: {size: 8}
layers:
  enc: {cell: lstm, hidden: 16, input: x}
  dec: {cell: gru, hidden: 16, input: "y", init: {from: enc}}
outputs:
  z: {from: dec}
"""


@pytest.mark.parametrize("view", ["rolled", "unrolled"])
def test_a_broken_spec_draws_with_its_problems_in_red(view: str) -> None:
    spec = rnnc.parse_spec(spec_text(BROKEN))
    source = render(spec, view=view).source
    assert "unknown name 'y'" in source  # the message, in the legend
    assert re.search(rf'\ty \[[^]]*color="{ERROR}"', source)  # the missing node
    assert re.search(rf'\ty -> "?dec[^ ]*"? \[[^]]*color="{ERROR}"', source)  # the bad edge
    if has_dot():
        assert dot_accepts(source)


@pytest.mark.parametrize("cell", list(rnnc.builtin_cells()))
def test_every_builtin_cell_draws(cell: str) -> None:
    source = render(view="cell", cell=cell).source
    state = rnnc.builtin_cells()[cell].state
    for s in state:
        assert f"{s}(t-1)" in source and f"{s}(t)" in source
    assert "x(t)" in source
    if has_dot():
        assert dot_accepts(source)


def test_unknown_views_and_cells_are_refused() -> None:
    spec = rnnc.load_spec(GALLERY[0])
    with pytest.raises(rnnc.RnncError, match="rolled, unrolled, cell"):
        render(spec, view="flat")
    with pytest.raises(rnnc.RnncError, match="did you mean 'lstm'"):
        render(spec, view="cell", cell="lsmt")


@needs_dot
def test_cli_picks_the_format_from_the_suffix(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = str(ROOT / "specs" / "elman_rnn.yaml")
    for suffix, magic in [
        ("svg", b"<?xml"),
        ("png", b"\x89PNG"),
        ("pdf", b"%PDF"),
        ("dot", b"digraph"),
    ]:
        target = tmp_path / f"g.{suffix}"
        assert cli("render", spec, "-o", str(target)).code == 0
        assert target.read_bytes().startswith(magic)
    target = tmp_path / "g.svg"
    assert cli("render", spec, "-o", str(target), "--format", "dot").code == 0
    assert target.read_bytes().startswith(b"digraph")  # --format wins over the suffix
    assert cli("render", spec, "-o", str(tmp_path / "g.gif")).code == 2  # usage
    assert (
        cli("render", "--view", "cell", "--cell", "lstm", "-o", str(tmp_path / "c.svg")).code == 0
    )
    assert cli("render").code == 2


def test_without_dot_dot_text_works_and_pictures_say_how_to_get_it(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("rnnc.tools.drawing.shutil.which", lambda name: None)
    spec = str(ROOT / "specs" / "elman_rnn.yaml")
    assert cli("render", spec, "-o", str(tmp_path / "g.dot")).code == 0
    result = cli("render", spec, "-o", str(tmp_path / "g.svg"))
    assert result.code == 1
    assert "apt-get install graphviz" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "g.svg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["g.dot"]  # nothing half-written
    # Jupyter falls back to text and never raises.
    bundle = rnnc.load_spec(spec)._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}


@needs_dot
def test_jupyter_shows_svg() -> None:
    spec = rnnc.load_spec(GALLERY[0])
    assert "image/svg+xml" in spec._repr_mimebundle_()
    assert "image/svg+xml" in rnnc.analyze(spec)._repr_mimebundle_()
    assert "image/svg+xml" in render(spec)._repr_mimebundle_()


# --- the gallery pictures in docs/ ---------------------------------------------------------

PICTURES = ROOT / "docs" / "gallery"


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
def test_gallery_pictures_are_up_to_date(path: Path) -> None:
    """docs/gallery/NAME.svg was drawn from the DOT text rnnc makes today (`make
    gallery` redraws them; each SVG records the hash of its DOT source)."""
    source = render(rnnc.load_spec(path), view="unrolled").source
    digest = hashlib.sha256(source.encode()).hexdigest()
    svg = (PICTURES / f"{path.stem}.svg").read_text()
    assert f"rnnc-dot-sha256: {digest}" in svg, "run `make gallery` and commit docs/gallery"
    assert f"(gallery/{path.stem}.svg)" in (ROOT / "docs" / "gallery.md").read_text()


def test_gallery_pictures_are_drawn_by_encode() -> None:
    """The hash is of the DOT text that was laid out, so a stale picture fails above."""
    drawing = render(rnnc.load_spec(GALLERY[0]))
    if has_dot():
        assert encode(drawing, "svg").startswith(b"<?xml")


# --- pictures a lecturer would put on a slide (issue 13, part 7) ------------------------


def _spec(name: str) -> rnnc.Spec:
    return rnnc.load_spec(ROOT / "specs" / f"{name}.yaml")


@pytest.mark.parametrize("view", ["rolled", "unrolled"])
def test_luong_has_its_attentional_vector_and_bahdanau_does_not(view: str) -> None:
    luong = render(_spec("seq2seq_luong"), view=view).source
    bahdanau = render(_spec("seq2seq_attention"), view=view).source
    assert "tanh(W_c [context; h])" in luong and "attentional" in luong
    assert "attentional" not in bahdanau
    # Luong: the context goes into h̃ and h̃ is what the dense layer reads.
    assert re.search(r'-> "decoder·attentional[^"]*" \[[^]]*arrowhead=vee', luong)
    assert re.search(r'"decoder·attentional[^"]*" -> "?out', luong)
    # Bahdanau: the context goes into the cell.
    assert re.search(r'-> "?decoder(\.fwd\.l0@\d)?"? \[[^]]*arrowhead=vee', bahdanau)


def test_input_feeding_is_its_own_edge_across_time() -> None:
    path = ROOT / "specs" / "seq2seq_luong_feeding.yaml"
    if not path.exists():
        pytest.skip("no gallery spec with input feeding")
    source = render(rnnc.load_spec(path), steps=3).source
    assert re.search(
        r'"decoder\.fwd\.l0@1" -> "decoder·attentional@0" \[label="t-1"[^]]*dir=back',
        source,
    )


@pytest.mark.parametrize("view", ["rolled", "unrolled"])
def test_scheduled_sampling_shows_its_probabilities(view: str) -> None:
    source = render(_spec("seq2seq_luong"), view=view).source  # teacher_forcing: 0.75
    assert "truth, p = 0.75" in source and "t-1, p = 0.25" in source
    forced = render(_spec("seq2seq_attention"), view=view).source  # 1.0: nothing to say
    assert "p = " not in forced


def test_feedback_edges_run_between_their_own_two_steps() -> None:
    """Each is laid out as an edge up from the cell it feeds (arrow turned round), so
    dot routes each between its two columns: no crossing, labels apart."""
    source = render(_spec("seq2seq_luong"), steps=4).source
    for t in range(1, 4):
        assert re.search(rf'"decoder\.fwd\.l0@{t}" -> "out@{t - 1}" \[[^]]*dir=back', source)


def test_input_and_output_edges_look_different() -> None:
    from rnnc.tools.drawing import EDGE_STYLES

    assert EDGE_STYLES["input"][0] != EDGE_STYLES["output"][0]
    source = render(_spec("elman_rnn")).source
    inputs = re.findall(r'"x@0" -> "hidden[^"]*" \[([^]]*)\]', source)
    outputs = re.findall(r'"out@0" -> "outputs[^"]*" \[([^]]*)\]', source)
    assert inputs and outputs and inputs[0] != outputs[0]


@needs_dot
@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
def test_the_legend_is_at_most_a_third_of_the_width(path: Path) -> None:
    import json

    source = render(rnnc.load_spec(path)).source
    laid = json.loads(
        subprocess.run(
            ["dot", "-Tjson"], input=source.encode(), capture_output=True, check=True
        ).stdout
    )
    width = float(laid["bb"].split(",")[2])
    legend = next(o for o in laid["objects"] if o.get("name") == "legend")
    assert float(legend["width"]) * 72 <= width / 3
    assert "<table" in legend["label"].lower() or "table" in source  # a table: no label on a line


def test_the_cell_view_names_the_parts_and_has_a_legend() -> None:
    source = render(view="cell", cell="gru_reset_before").source
    assert "[x, r ⊙ h]" in source
    assert "legend" in source and "matrix product" in source


@pytest.mark.parametrize("path", GALLERY, ids=lambda p: p.stem)
def test_every_layer_names_its_cell_in_the_unrolled_view(path: Path) -> None:
    spec = rnnc.load_spec(path)
    source = render(spec).source
    for name, layer in spec.recurrent_layers().items():
        assert f"{name}: {layer.cell}" in source


def test_heads_and_handoffs_say_what_they_read() -> None:
    text = """
    rnnc: 1
    name: heads
    inputs:
      x: {size: 4}
    layers:
      enc: {cell: lstm, hidden: 8, input: x, depth: 2}
      final: {dense: 2, input: {from: enc, state: h}}
      pooled: {dense: 2, input: {from: enc, pool: mean}}
      last: {dense: 2, input: {from: enc, steps: last}}
    outputs:
      a: {from: final}
      b: {from: pooled}
      c: {from: last}
    """
    spec = rnnc.parse_spec(spec_text(text))
    for view in ("rolled", "unrolled"):
        source = render(spec, view=view).source
        assert "final h" in source and "mean over t" in source and "last step" in source
    unrolled = render(spec, steps=3).source
    # No time axis: one node each; a pool reads every step, a final state one.
    assert len(re.findall(r"-> pooled \[", unrolled)) == 3
    assert len(re.findall(r"-> final \[", unrolled)) == 1
    sutskever = ROOT / "specs" / "seq2seq_sutskever.yaml"
    if sutskever.exists():
        source = render(rnnc.load_spec(sutskever)).source
        assert re.search(
            r'"encoder\.fwd\.l0@3" -> "decoder\.fwd\.l0@0" \[[^]]*label="h, c"', source
        )
        assert re.search(
            r'"encoder\.fwd\.l1@3" -> "decoder\.fwd\.l1@0" \[[^]]*label="h, c"', source
        )
