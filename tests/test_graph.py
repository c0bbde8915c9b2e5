"""rnnc.front.graph: the rolled graph and its unrolling over time."""

from __future__ import annotations

import networkx as nx
import pytest

import rnnc
from rnnc.front.graph import output_node
from tests.helpers import spec_text

SEQ2SEQ = """
rnnc: 1
name: s2s
inputs:
  src: {vocab: 20, embed: 8}
  tgt: {vocab: 20, embed: 8}
layers:
  enc: {cell: lstm, hidden: 16, input: src, direction: bidirectional, depth: 2}
  dec:
    cell: gru
    hidden: 16
    input: tgt
    init: {from: enc, bridge: dense}
    attention: {memory: enc, score: additive}
    feedback: out
  out: {dense: 20, input: dec}
outputs:
  logits: {from: out}
  summary: {from: enc, state: h}
"""


def graph_of(text: str) -> nx.MultiDiGraph:
    spec = rnnc.parse_spec(spec_text(text))
    analysis = rnnc.analyze(spec)
    assert analysis.ok, [d.format() for d in analysis.errors]
    return analysis.graph


def test_rolled_graph_has_one_node_per_input_layer_and_output() -> None:
    g = graph_of(SEQ2SEQ)
    assert set(g.nodes) == {"src", "tgt", "enc", "dec", "out", "outputs.logits", "outputs.summary"}
    kinds = {(u, v, d["kind"]): d["delay"] for u, v, d in g.edges(data=True)}
    assert kinds == {
        ("src", "enc", "input"): 0,
        ("enc", "enc", "state"): 1,
        ("tgt", "dec", "input"): 0,
        ("dec", "dec", "state"): 1,
        ("enc", "dec", "init"): 0,
        ("enc", "dec", "attention"): 0,
        ("out", "dec", "feedback"): 1,
        ("dec", "out", "input"): 0,
        ("out", output_node("logits"), "output"): 0,
        ("enc", output_node("summary"), "output"): 0,
    }


def test_encoder_and_decoder_keep_their_own_time_axes() -> None:
    g = graph_of(SEQ2SEQ)
    axes = {n: d["axis"] for n, d in g.nodes(data=True)}
    assert axes["enc"] == "src" and axes["dec"] == "tgt" and axes["out"] == "tgt"


def test_sequences_concatenated_into_one_layer_share_an_axis() -> None:
    g = graph_of(
        """
        rnnc: 1
        name: two
        inputs:
          a: {size: 3}
          b: {size: 2}
          ctx: {size: 4, sequence: false}
        layers:
          r: {cell: rnn, hidden: 5, input: [a, b, ctx]}
        outputs:
          y: {from: r}
        """
    )
    assert g.nodes["r"]["axis"] == "a" and g.nodes["b"]["axis"] == "a"
    assert g.nodes["ctx"]["axis"] is None


def test_unrolled_graph_has_a_node_per_layer_depth_direction_and_step() -> None:
    g = graph_of(SEQ2SEQ)
    u = rnnc.unroll(g, {"src": 5, "tgt": 4})
    cells = [n for n, d in u.nodes(data=True) if d["kind"] == "cell"]
    assert len([n for n in cells if n[0] == "enc"]) == 2 * 2 * 5
    assert len([n for n in cells if n[0] == "dec"]) == 1 * 1 * 4
    assert nx.is_directed_acyclic_graph(u)
    # State edges run forward in time for fwd and backward for bwd.
    assert u.has_edge(("enc", 0, "fwd", 1), ("enc", 0, "fwd", 2))
    assert u.has_edge(("enc", 0, "bwd", 2), ("enc", 0, "bwd", 1))
    assert not u.has_edge(("enc", 0, "bwd", 1), ("enc", 0, "bwd", 2))
    # Stacked layers read both directions of the layer below.
    assert u.has_edge(("enc", 0, "bwd", 3), ("enc", 1, "fwd", 3))


def test_unrolled_links_between_encoder_and_decoder() -> None:
    u = rnnc.unroll(graph_of(SEQ2SEQ), {"src": 5, "tgt": 4})
    # The decoder starts from the encoder's final states: fwd at the last step, bwd at 0.
    assert u.has_edge(("enc", 1, "fwd", 4), ("dec", 0, "fwd", 0), key="init")
    assert u.has_edge(("enc", 1, "bwd", 0), ("dec", 0, "fwd", 0), key="init")
    assert not u.has_edge(("enc", 1, "fwd", 3), ("dec", 0, "fwd", 0), key="init")
    # Attention: every memory step reaches every decoder step.
    attention = [e for e in u.edges(keys=True) if e[2] == "attention"]
    assert len(attention) == 5 * 2 * 4  # memory steps x directions x decoder steps
    # Feedback: the prediction at t-1 feeds step t, and nothing feeds step 0.
    assert u.has_edge(("out", 2), ("dec", 0, "fwd", 3), key="feedback")
    assert not any(k == "feedback" for _, _, k in u.in_edges(("dec", 0, "fwd", 0), keys=True))


def test_unrolled_outputs_follow_their_selection() -> None:
    u = rnnc.unroll(graph_of(SEQ2SEQ), {"src": 3, "tgt": 2})
    assert (output_node("logits"), 1) in u
    assert set(u.predecessors((output_node("summary"),))) == {
        ("enc", 1, "fwd", 2),
        ("enc", 1, "bwd", 0),
    }


def test_recurrent_edges_with_delay_skip_steps() -> None:
    u = rnnc.unroll(
        graph_of(
            """
            rnnc: 1
            name: skip
            inputs:
              x: {size: 3}
            layers:
              r: {cell: rnn, hidden: 4, input: x, recurrent: [{from: r, delay: 2}]}
            outputs:
              y: {from: r}
            """
        ),
        5,
    )
    assert u.has_edge(("r", 0, "fwd", 1), ("r", 0, "fwd", 3), key="recurrent")
    assert u.has_edge(("r", 0, "fwd", 2), ("r", 0, "fwd", 3), key="state")
    assert not u.has_edge(("r", 0, "fwd", 2), ("r", 0, "fwd", 3), key="recurrent")
    assert not any(k == "recurrent" for _, _, k in u.in_edges(("r", 0, "fwd", 1), keys=True))


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_one_to_many_and_many_to_one_shapes(steps: int) -> None:
    u = rnnc.unroll(
        graph_of(
            """
            rnnc: 1
            name: cls
            inputs:
              x: {size: 3}
            layers:
              r: {cell: gru, hidden: 4, input: x}
              d: {dense: 2, input: r}
            outputs:
              y: {from: d, steps: last}
            """
        ),
        steps,
    )
    # Many-to-one: a single output node that any step may feed (each example's last).
    assert [n for n, d in u.nodes(data=True) if d["kind"] == "output"] == [(output_node("y"),)]
    assert u.in_degree((output_node("y"),)) == steps
