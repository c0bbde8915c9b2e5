"""The NumPy backend: generated forward and BPTT, checked against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import rnnc
import rnnc.runtime.registry
from tests.conftest import GALLERY
from tests.helpers import directional_errors, random_inputs, spec_text

FD_TOLERANCE = 1e-6


def compiled(text_or_spec, dtype: str = "float64"):
    spec = (
        rnnc.parse_spec(spec_text(text_or_spec)) if isinstance(text_or_spec, str) else text_or_spec
    )
    return rnnc.compile(spec, backend="numpy", dtype=dtype)


class Mode:
    """A compiled model whose run and vjp always use the same mode options."""

    def __init__(self, model, **options):
        self.model, self.options = model, options

    def run(self, inputs, lengths):
        return self.model.run(inputs, lengths=lengths, **self.options)

    def vjp(self, inputs, cotangents, lengths):
        return self.model.vjp(inputs, cotangents, lengths=lengths, **self.options)

    def params(self):
        return self.model.params()

    def load_params(self, params):
        self.model.load_params(params)


def has_feedback(spec) -> bool:
    return any(getattr(layer, "feedback", None) for layer in spec.layers.values())


MODES = ["teacher forced", "scheduled sampling", "generate"]


# Specs without feedback have one mode; the others are run in all three.
GALLERY_MODES = [
    pytest.param(path, mode, id=f"{path.stem}-{mode}")
    for path in GALLERY
    for mode in (MODES if has_feedback(rnnc.load_spec(path)) else MODES[:1])
]


@pytest.mark.parametrize(("path", "mode"), GALLERY_MODES)
def test_gallery_gradients_match_finite_differences(path, mode: str) -> None:
    spec = rnnc.load_spec(path)
    model = compiled(spec)
    rng = np.random.default_rng(7)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=4)
    options = {
        "teacher forced": {"tf_mask": None},
        "scheduled sampling": {"tf_mask": rng.random((3, 4)) < 0.5},
        "generate": {"mode": "generate", "steps": 4},
    }[mode]
    errors = directional_errors(Mode(model, **options), inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > FD_TOLERANCE}
    assert not bad, bad


CELL_SPEC = """
rnnc: 1
name: cell_check
inputs:
  x: {size: 3}
layers:
  r: {cell: CELL, hidden: 4, input: x, direction: DIRECTION, depth: DEPTH, residual: RESIDUAL, merge: MERGE}
  out: {dense: 5, input: r, activation: ACTIVATION}
outputs:
  y: {from: out}
  last: {from: r, steps: last}
  h: {from: r, state: h}
"""


@pytest.mark.parametrize("cell", list(rnnc.builtin_cells()))
@pytest.mark.parametrize(
    ("direction", "depth", "residual", "merge", "activation"),
    [
        ("forward", 1, "false", "concat", "tanh"),
        ("backward", 2, "true", "concat", "log_softmax"),
        ("bidirectional", 2, "true", "concat", "softmax"),
        ("bidirectional", 1, "false", "sum", "sigmoid"),
        ("bidirectional", 2, "false", "mean", "relu"),
        ("bidirectional", 1, "false", "mul", "identity"),
    ],
)
def test_every_cell_and_layer_option_against_finite_differences(
    cell: str, direction: str, depth: int, residual: str, merge: str, activation: str
) -> None:
    text = (
        CELL_SPEC.replace("CELL", cell)
        .replace("DIRECTION", direction)
        .replace("DEPTH", str(depth))
        .replace("RESIDUAL", residual)
        .replace("MERGE", merge)
        .replace("ACTIVATION", activation)
    )
    spec = rnnc.parse_spec(spec_text(text))
    model = compiled(spec)
    rng = np.random.default_rng(depth)
    inputs, lengths = random_inputs(spec, rng, batch=4, steps=6)
    errors = directional_errors(model, inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > FD_TOLERANCE}
    assert not bad, bad


def test_a_bias_added_to_a_named_sum_stays_out_of_it() -> None:
    """s = h + b2 with h = W1 @ [h, x, s]: b2 belongs to s, not to h's hoisted
    projection (hypothesis found the lowering folding it into h, and dropping h)."""
    spec = rnnc.parse_spec(
        spec_text(
            """
            rnnc: 1
            name: fold
            cells:
              mine:
                state: [h, s]
                equations:
                  h: 0.5 * tanh(W1 @ [h, x, s])
                  s: h + b2
                output: s
            inputs:
              x: {size: 3}
            layers:
              r: {cell: mine, hidden: 2, input: x}
            outputs:
              y: {from: r}
            """
        )
    )
    model = compiled(spec)
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=4)
    params = model.params()
    y = model.run(inputs, lengths=lengths)["y"]
    # By hand, for the first example (full length): h_t, then s_t = h_t + b2.
    W1, b2 = params["r.fwd.l0.W1"], params["r.fwd.l0.b2"]
    h, s = np.zeros(2), np.zeros(2)
    for t in range(4):
        h = 0.5 * np.tanh(W1 @ np.concatenate([h, inputs["x"][0, t], s]))
        s = h + b2
        np.testing.assert_allclose(y[0, t], s, rtol=1e-12)
    errors = directional_errors(model, inputs, lengths, rng)
    assert not {k: v for k, v in errors.items() if v > FD_TOLERANCE}


NAMED = """
rnnc: 1
name: named
cells:
  mine:
    state: [h]
    equations:
      r: sigmoid(W_r @ [x, h])
      NAME: tanh(U @ [x, r * h])
      h: (1 - r) * h + r * NAME * NAME
inputs:
  x: {size: 3}
layers:
  l: {cell: mine, hidden: 4, input: x, direction: bidirectional}
outputs:
  y: {from: l}
"""


@pytest.mark.parametrize("name", ["_1", "_3", "_f1", "_d2", "h_prev", "d_h", "d_r"])
def test_a_value_may_have_a_name_like_the_ones_the_lowering_makes(name: str) -> None:
    """Found by review: a value called "_1", "h_prev" or "d_h" met the lowering's own
    names; the NumPy backend computed wrong numbers without a word. The same cell
    with the value called "u" is the reference, on every backend."""
    renamed = rnnc.parse_spec(spec_text(NAMED.replace("NAME", "u")))
    spec = rnnc.parse_spec(spec_text(NAMED.replace("NAME", name)))
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=4)
    for backend in rnnc.runtime.registry.usable_backends():
        reference = rnnc.compile(renamed, backend=backend, dtype="float64")
        model = rnnc.compile(spec, backend=backend, dtype="float64")
        model.load_params(reference.params())
        out, expected = model.run(inputs, lengths=lengths), reference.run(inputs, lengths=lengths)
        np.testing.assert_allclose(out["y"], expected["y"], rtol=1e-13, atol=1e-15)
        cotangents = {"y": rng.standard_normal(out["y"].shape)}
        grads = model.vjp(inputs, cotangents, lengths=lengths)
        for key, value in reference.vjp(inputs, cotangents, lengths=lengths).items():
            np.testing.assert_allclose(grads[key], value, rtol=1e-12, atol=1e-14)


def test_ragged_batches_match_running_each_example_alone() -> None:
    spec = rnnc.parse_spec(
        spec_text(
            CELL_SPEC.replace("CELL", "lstm")
            .replace("DIRECTION", "bidirectional")
            .replace("DEPTH", "2")
            .replace("RESIDUAL", "false")
            .replace("MERGE", "concat")
            .replace("ACTIVATION", "identity")
        )
    )
    model = compiled(spec)
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(spec, rng, batch=4, steps=7)
    lengths["x"] = np.array([7, 3, 1, 5])
    batch = model.run(inputs, lengths=lengths)
    for b, n in enumerate(lengths["x"]):
        alone = model.run({"x": inputs["x"][b : b + 1, :n]}, lengths={"x": np.array([n])})
        np.testing.assert_allclose(batch["y"][b, :n], alone["y"][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(batch["y"][b, n:], 0.0)  # zero past the length
        np.testing.assert_allclose(batch["last"][b], alone["last"][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batch["h"][b], alone["h"][0], rtol=1e-12, atol=1e-12)


def test_slide_notation_lstm_computes_the_builtin_lstm() -> None:
    slide = rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index("lstm_slide_notation")])
    builtin_text = spec_text(
        """
        rnnc: 1
        name: builtin
        inputs:
          x: {size: 10}
        layers:
          lstm: {cell: lstm, hidden: 20, input: x}
          out: {dense: 5, input: lstm, activation: softmax}
        outputs:
          y_hat: {from: out}
        """
    )
    slide_model = compiled(slide)
    builtin_model = compiled(builtin_text)
    rename = {"c_tilde": "g", "W_c": "W_g", "b_c": "b_g", "W_u": "W_i", "b_u": "b_i"}
    params = {}
    for name, value in slide_model.params().items():
        prefix, _, last = name.rpartition(".")
        params[f"{prefix}.{rename.get(last, last)}" if prefix.startswith("lstm.") else name] = value
    builtin_model.load_params(params)
    rng = np.random.default_rng(1)
    inputs, lengths = random_inputs(slide, rng)
    a = slide_model.run(inputs, lengths=lengths)["y_hat"]
    b = builtin_model.run(inputs, lengths=lengths)["y_hat"]
    np.testing.assert_array_equal(a, b)


def test_stable_functions_do_not_overflow() -> None:
    spec = rnnc.parse_spec(
        spec_text(
            """
            rnnc: 1
            name: stable
            inputs:
              x: {size: 2}
            layers:
              r: {cell: lstm, hidden: 3, input: x}
              p: {dense: 4, input: r, activation: softmax}
              q: {dense: 4, input: r, activation: log_softmax}
              s: {dense: 4, input: x, activation: sigmoid}
            outputs:
              p: {from: p}
              q: {from: q}
              s: {from: s}
            """
        )
    )
    model = compiled(spec)
    x = np.array([[[1e4, -1e4], [-1e4, 1e4]]])
    with np.errstate(all="raise"):
        out = model.run({"x": x}, lengths={"x": np.array([2])})
        grads = model.vjp(
            {"x": x}, {k: np.ones_like(v) for k, v in out.items()}, lengths={"x": np.array([2])}
        )
    assert all(np.all(np.isfinite(v)) for v in out.values())
    assert all(np.all(np.isfinite(v)) for v in grads.values())


def test_generated_source_reads_like_the_equations() -> None:
    model = compiled(rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index("peephole_lstm")]))
    source = model.source
    assert source.startswith('"""NumPy model \'peephole_lstm\', generated by rnnc')
    assert "import torch" not in source and "\nimport numpy as np\n" in source
    # One stacked matrix of the input blocks of all gates, one of the recurrent blocks.
    blocks = "P['W_i'][:, {0}], P['W_f'][:, {0}], P['W_g'][:, {0}], P['W_o'][:, {0}]"
    assert f"P['W_x'] = np.concatenate([{blocks.format('0:8')}], axis=0)" in source
    assert f"P['R_h'] = np.concatenate([{blocks.format('8:40')}], axis=0)" in source
    # Biases are added once, to the projections of all steps.
    assert "P['b_x'] = np.concatenate([P['b_i'], P['b_f'], P['b_g'], P['b_o']])" in source
    assert "xp = (xs.reshape(T * B, -1) @ P['W_x'].T + P['b_x']).reshape(T, B, -1)" in source
    # One product and one add per step for the four gates.
    assert "    rp_h = h_prev @ R_h_T\n    pre_h = xp_t + rp_h  # 4 gates at once\n" in source
    assert "    c = f * c_prev + i * g\n" in source
    assert "    o = sigmoid(pre_h[:, 96:128] + p_o * c)\n" in source


def test_float32_runs_in_float32() -> None:
    model = compiled(rnnc.load_spec(GALLERY[0]), dtype="float32")
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(rnnc.load_spec(GALLERY[0]), rng)
    out = model.run(inputs, lengths=lengths)
    assert all(v.dtype == np.float32 for v in out.values())


def test_compile_writes_a_module_that_works_on_its_own(cli, tmp_path) -> None:
    import importlib.util
    import subprocess
    import sys

    path = GALLERY[[p.stem for p in GALLERY].index("bidirectional_lstm")]
    target = tmp_path / "model.py"
    result = cli("compile", path, "--backend", "numpy", "--dtype", "float64", "-o", target)
    assert result.code == 0, result.err
    source = target.read_text()
    assert source == compiled(rnnc.load_spec(path)).source
    # Standalone: only numpy is imported, in a fresh interpreter with no rnnc on the path.
    probe = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import model;"
        "assert 'rnnc' not in sys.modules; print(sorted(n for n in dir(model) if not n.startswith('_'))[:3])"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spec = importlib.util.spec_from_file_location("model_under_test", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(rnnc.load_spec(path), rng)
    params = rnnc.init_params(rnnc.load_spec(path), seed=2)
    outputs, saved = module.forward(params, inputs, lengths)
    model = compiled(rnnc.load_spec(path))
    model.load_params(params)
    expected = model.run(inputs, lengths=lengths)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name], value)
    grads = module.backward(
        params, inputs, lengths, saved, {k: np.ones_like(v) for k, v in outputs.items()}
    )
    assert set(params) <= set(grads)


def test_compile_usage_and_spec_errors(cli, tmp_path) -> None:
    spec = GALLERY[0]
    assert cli("compile", spec, "--backend", "nump").code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("rnnc: 1\n")
    result = cli("compile", bad, "-o", tmp_path / "out.py")
    assert result.code == 1 and "missing key" in result.err
    assert not (tmp_path / "out.py").exists()


def test_tracebacks_show_generated_lines() -> None:
    import linecache
    import traceback

    model = compiled(rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index("elman_rnn")]))
    wrong = {"x.W": np.zeros((3, 3))}  # the generated forward itself, with broken parameters
    try:
        model._forward(wrong, {"x": np.zeros((2, 3, 10))}, {"x": np.array([3, 3])})
    except (KeyError, ValueError) as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        generated = [f for f in frames if f.filename.startswith("<rnnc-numpy:")]
        assert generated and generated[-1].line  # the source line is known to linecache
        assert (
            linecache.getline(generated[-1].filename, generated[-1].lineno).strip()
            == generated[-1].line
        )
    else:
        raise AssertionError("a missing parameter must fail inside the generated code")


LINKS = """
rnnc: 1
name: links
inputs:
  src: {size: 3}
  tgt: {vocab: 6, embed: 4}
  ctx: {size: 5, sequence: false}
layers:
  enc: {cell: gru, hidden: 4, input: [src, ctx], direction: bidirectional, merge: MERGE}
  dec:
    cell: CELL
    hidden: 4
    depth: 2
    input: tgt
    init: {from: INIT, bridge: BRIDGE}
    attention: {memory: enc, score: SCORE}
    recurrent: [{from: tgt, delay: 2}]
  out: {dense: 6, input: dec, activation: log_softmax}
outputs:
  y: {from: out}
  enc_h: {from: enc, state: h}
"""


@pytest.mark.parametrize(
    ("cell", "merge", "init", "bridge", "score"),
    [
        ("lstm", "sum", "enc", "none", "dot"),
        ("gru", "concat", "enc", "dense", "general"),
        ("lstm_peephole", "mean", "ctx", "dense", "general"),
        ("rnn", "mul", "enc", "none", "general"),
    ],
)
def test_encoder_decoder_links_against_finite_differences(
    cell: str, merge: str, init: str, bridge: str, score: str
) -> None:
    text = (
        LINKS.replace("CELL", cell)
        .replace("MERGE", merge)
        .replace("INIT", init)
        .replace("BRIDGE", bridge)
        .replace("SCORE", score)
    )
    spec = rnnc.parse_spec(spec_text(text))
    assert rnnc.check(spec) == [], [d.format() for d in rnnc.check(spec)]
    model = compiled(spec)
    rng = np.random.default_rng(5)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=5)
    lengths["tgt"] = np.array([5, 2, 4])
    errors = directional_errors(model, inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > FD_TOLERANCE}
    assert not bad, bad


def test_attention_gives_no_weight_to_memory_past_its_length() -> None:
    text = LINKS.replace("CELL", "lstm").replace("MERGE", "sum").replace("INIT", "enc")
    spec = rnnc.parse_spec(spec_text(text.replace("BRIDGE", "none").replace("SCORE", "dot")))
    model = compiled(spec)
    rng = np.random.default_rng(3)
    inputs, lengths = random_inputs(spec, rng, batch=2, steps=5)
    lengths["src"] = np.array([5, 3])
    base = model.run(inputs, lengths=lengths)["y"]
    changed = {**inputs, "src": inputs["src"].copy()}
    changed["src"][1, 3:] = 100.0  # past example 1's length: must change nothing
    np.testing.assert_array_equal(model.run(changed, lengths=lengths)["y"], base)


@pytest.mark.parametrize(
    "name", ["seq2seq", "seq2seq_attention", "seq2seq_luong", "image_captioning"]
)
def test_generation_feeds_back_the_argmax(name: str) -> None:
    # Generating is teacher forcing on the model's own argmax: feeding those tokens as
    # ground truth must give the same outputs, step for step.
    spec = rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index(name)])
    model = compiled(spec)
    rng = np.random.default_rng(4)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=6)
    target = "caption" if name == "image_captioning" else "tgt"
    generated = model.run(inputs, lengths=lengths, mode="generate", steps=6)["logits"]
    tokens = np.concatenate([inputs[target][:, :1], generated[:, :-1].argmax(axis=-1)], axis=1)
    forced = {**inputs, target: tokens}
    lengths = {**lengths, target: np.full(3, 6)}
    again = model.run(forced, lengths=lengths, tf_mask=np.ones((3, 6), dtype=bool))["logits"]
    np.testing.assert_allclose(again, generated, rtol=1e-12, atol=1e-12)


def test_scheduled_sampling_mask_is_drawn_from_the_seed() -> None:
    spec = rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index("seq2seq_luong")])
    model = compiled(spec)
    rng = np.random.default_rng(0)
    inputs, lengths = random_inputs(spec, rng, batch=4, steps=8)
    a = model.run(inputs, lengths=lengths, seed=1)["logits"]
    b = model.run(inputs, lengths=lengths, seed=1)["logits"]
    c = model.run(inputs, lengths=lengths, seed=2)["logits"]
    forced = model.run(inputs, lengths=lengths, tf_mask=np.ones((4, 8), dtype=bool))["logits"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, forced)


OUTPUT_TO_HIDDEN = """
rnnc: 1
name: output_to_hidden
inputs:
  x: {size: 3}
  y_prev: {size: 2}
layers:
  h: {cell: CELL, hidden: 4, input: [x, y_prev], recurrent: [{from: o, delay: 2}], feedback: o, teacher_forcing: 0.5}
  o: {dense: 2, input: h, activation: tanh}
outputs:
  y: {from: o}
"""


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm_cifg"])
def test_real_valued_feedback_and_output_to_hidden_edges(cell: str) -> None:
    spec = rnnc.parse_spec(spec_text(OUTPUT_TO_HIDDEN.replace("CELL", cell)))
    assert rnnc.check(spec) == []
    model = compiled(spec)
    rng = np.random.default_rng(9)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=5)
    lengths["x"] = np.array([5, 3, 4])
    mask = rng.random((3, 5)) < 0.5
    errors = directional_errors(Mode(model, tf_mask=mask), inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > FD_TOLERANCE}
    assert not bad, bad


DROPOUT = """
rnnc: 1
name: dropout
inputs:
  x: {size: 3}
  y_prev: {size: 2}
layers:
  deep: {cell: lstm, hidden: 4, input: x, depth: 3, dropout: 0.4, residual: true, direction: DIRECTION}
  dec: {cell: gru, hidden: 4, depth: 2, dropout: 0.3, input: [y_prev], feedback: o, teacher_forcing: 0.5}
  o: {dense: 2, input: dec}
outputs:
  y: {from: deep}
  z: {from: o}
"""


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_dropout_is_seeded_and_differentiable(direction: str) -> None:
    spec = rnnc.parse_spec(spec_text(DROPOUT.replace("DIRECTION", direction)))
    model = compiled(spec)
    rng = np.random.default_rng(2)
    inputs, lengths = random_inputs(spec, rng, batch=3, steps=5)
    lengths = {"x": lengths["x"], "y_prev": lengths["x"]}
    plain = model.run(inputs, lengths=lengths)
    dropped = model.run(inputs, lengths=lengths, dropout_seed=3)
    again = model.run(inputs, lengths=lengths, dropout_seed=3)
    assert not np.allclose(plain["y"], dropped["y"]) and not np.allclose(plain["z"], dropped["z"])
    np.testing.assert_array_equal(dropped["y"], again["y"])
    # Off in generate mode, whatever the seed.
    gen = model.run(inputs, lengths=lengths, mode="generate", steps=5, dropout_seed=3)
    np.testing.assert_array_equal(
        gen["y"], model.run(inputs, lengths=lengths, mode="generate", steps=5)["y"]
    )
    errors = directional_errors(Mode(model, dropout_seed=3), inputs, lengths, rng)
    bad = {k: v for k, v in errors.items() if v > FD_TOLERANCE}
    assert not bad, bad


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda i: {**i, "src": i["src"].astype(float)}, "src: expected integer token ids"),
        (lambda i: {**i, "src": i["src"] + 100}, "src: token ids must be in 0..39"),
        (lambda i: {k: v for k, v in i.items() if k != "tgt"}, "tgt: missing"),
        (
            lambda i: {**i, "tgt": i["tgt"][:, :, None]},
            "tgt: expected shape (B, T), found (2, 4, 1)",
        ),
        (lambda i: {**i, "extra": i["src"]}, "extra: not an input of the spec"),
    ],
)
def test_inputs_that_do_not_fit_are_refused_clearly(change, words: str) -> None:
    spec = rnnc.load_spec(GALLERY[[p.stem for p in GALLERY].index("seq2seq")])
    model = compiled(spec)
    inputs, _ = random_inputs(spec, np.random.default_rng(0), batch=2, steps=4)
    with pytest.raises(rnnc.RnncError, match="inputs do not fit the spec") as exc:
        model.run(change(inputs))
    assert words in str(exc.value)
