"""rnnc.runtime.params and rnnc.tools.summary: canonical parameter names, shapes and output shapes."""

from __future__ import annotations

import pytest

import rnnc
from rnnc.runtime.params import count, param_shapes
from rnnc.tools.summary import output_shapes
from tests.conftest import ROOT


def analysis_of(name: str) -> rnnc.Analysis:
    return rnnc.analyze(rnnc.load_spec(ROOT / "specs" / f"{name}.yaml"))


def test_seq2seq_attention_parameters_by_name() -> None:
    # The shapes follow from the spec by hand: embeddings (40, 32); a bidirectional GRU
    # encoder (hidden 64) over 32-wide inputs; a GRU decoder (64) whose input is the
    # 32-wide embedding plus the 128-wide additive-attention context; a dense bridge
    # from the 128-wide final h; a dense head to 40 tokens.
    shapes = param_shapes(analysis_of("seq2seq_attention"))
    H, E, M = 64, 32, 128
    expected = {"src.embedding": (40, E), "tgt.embedding": (40, E)}
    for d in ("fwd", "bwd"):
        p = f"encoder.{d}.l0"
        expected |= {
            f"{p}.W_r": (H, E + H),
            f"{p}.b_r": (H,),
            f"{p}.W_z": (H, E + H),
            f"{p}.b_z": (H,),
        }
        expected |= {f"{p}.W_in": (H, E), f"{p}.b_in": (H,), f"{p}.W_hn": (H, H), f"{p}.b_hn": (H,)}
    X = E + M
    p = "decoder.fwd.l0"
    expected |= {f"{p}.W_r": (H, X + H), f"{p}.b_r": (H,), f"{p}.W_z": (H, X + H), f"{p}.b_z": (H,)}
    expected |= {f"{p}.W_in": (H, X), f"{p}.b_in": (H,), f"{p}.W_hn": (H, H), f"{p}.b_hn": (H,)}
    expected |= {"decoder.bridge.W": (H, M), "decoder.bridge.b": (H,)}
    expected |= {
        "decoder.attention.W_q": (H, H),
        "decoder.attention.W_k": (H, M),
        "decoder.attention.v": (H,),
    }
    expected |= {"out.W": (40, H), "out.b": (40,)}
    assert shapes == expected
    assert list(shapes)[:2] == ["src.embedding", "tgt.embedding"]


def test_stacked_layers_read_the_layer_below() -> None:
    shapes = param_shapes(analysis_of("deep_residual_rnn"))
    assert shapes["stack.fwd.l0.W_i"] == (128, 128 + 128)
    assert shapes["stack.fwd.l3.W_o"] == (128, 128 + 128)
    assert "stack.fwd.l4.W_o" not in shapes


def test_luong_attention_parameters() -> None:
    shapes = param_shapes(analysis_of("seq2seq_luong"))
    assert shapes["decoder.attention.W_a"] == (64, 64)
    assert shapes["decoder.attention.W_c"] == (64, 64 + 64)
    assert shapes["decoder.attention.b_c"] == (64,)
    # Luong attention does not widen the cell input.
    assert shapes["decoder.fwd.l0.W_i"] == (64, 32 + 64)


def test_count() -> None:
    assert count({"a": (2, 3), "b": (4,), "c": ()}) == 6 + 4 + 1


def test_param_shapes_refuses_an_invalid_spec() -> None:
    spec = rnnc.parse_spec(
        "rnnc: 1\nname: bad\ninputs: {x: {size: 2}}\nlayers: {r: {cell: nope, hidden: 2, input: x}}\n"
        "outputs: {y: {from: r}}\n"
    )
    with pytest.raises(ValueError):
        param_shapes(rnnc.analyze(spec))


@pytest.mark.parametrize(
    ("name", "steps", "expected"),
    [
        ("sequence_classifier", {"words": 9}, {"label": (3, 2)}),
        ("bidirectional_lstm", {"tokens": 9}, {"tag_scores": (3, 9, 9), "summary": (3, 128)}),
        ("image_captioning", {"caption": 5}, {"logits": (3, 5, 1000)}),
        ("seq2seq", {"src": 7, "tgt": 4}, {"logits": (3, 4, 40)}),
    ],
)
def test_output_shapes(
    name: str, steps: dict[str, int], expected: dict[str, tuple[int, ...]]
) -> None:
    assert output_shapes(analysis_of(name), 3, steps) == expected
