"""ONNX export, in process: a round trip per registered family, and exports that must be refused.

Each round trip is checked twice: by the exporter itself (its reported max abs difference), and
here, independently, by onnxruntime on the written file at a batch size the exporter never used,
against the family's own `predict` on the model as trained.
"""

from __future__ import annotations

import jax
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx
from jax.sharding import AxisType
from onnx import numpy_helper

from capidsl.exec.state import init_state, model_family
from capidsl.export.errors import ExportError
from capidsl.export.onnx import export_onnx, held_out_inputs, inference_model, verify_file
from capidsl.plan.compile import compile_plan
from capidsl.recipe import Recipe

GPT = """
name: gpt-export
model: {family: gpt, vocab_size: 256, seq_len: 12, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
data: {source: synthetic, synthetic_examples: 256, validation_fraction: 0.25}
training: {batch_size: 16, duration: "10 steps", seed: 3}
"""
MLP = """
name: mlp-export
model: {family: mlp, input_dim: 12, hidden: [32, 32], num_classes: 5}
data: {source: synthetic, synthetic_examples: 256, validation_fraction: 0.25}
training: {batch_size: 16, duration: "10 steps", seed: 2}
"""
# Trained in bfloat16 (parameters and computation): the export widens the weights to float32.
GPT_BF16 = GPT + "precision: {params: bfloat16, compute: bfloat16, output: float32}\n"


@pytest.fixture(scope="module", autouse=True)
def compile_cache(xla_cache):
    """The suite's persistent XLA cache for this process too (jax2onnx's first call compiles ~70 functions)."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(xla_cache), 0, 0)):
        jax.config.update(k, v)
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def plan_and_params(text: str):
    """The plan and its initial model, built on one device (as `capidsl export` loads a run's weights)."""
    plan = compile_plan(Recipe.from_text(text, name="export.yaml"))
    axes = plan.mesh.axes
    one = jax.make_mesh((1,) * len(axes), axes, devices=jax.devices()[:1], axis_types=(AxisType.Auto,) * len(axes))
    graphdef, state = init_state(plan, one)
    return plan, graphdef, state.params


_MODELS: dict[str, tuple] = {}


def model(text: str):
    """(plan, graphdef, params) of a recipe's initial model, built once per module."""
    if text not in _MODELS:
        _MODELS[text] = plan_and_params(text)
    return _MODELS[text]


def fresh_inputs(plan, rows: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    if plan.data.kind == "lm":
        return rng.integers(0, plan.data.vocab_size, (rows, plan.batch.seq_len), dtype=np.int32)
    return rng.standard_normal((rows, plan.data.input_dim)).astype(np.float32)


@pytest.mark.parametrize("recipe, agree", [(GPT, 1e-4), (MLP, 1e-4), (GPT_BF16, 0.1)], ids=["gpt", "mlp", "gpt-bf16"])
def test_round_trip(tmp_path, recipe, agree):
    plan, graphdef, params = model(recipe)
    target = tmp_path / "out" / "model.onnx"
    result = export_onnx(plan, params, 7, target)

    assert target.is_file() and result.path == str(target) and result.step == 7
    assert 0 <= result.max_abs_diff <= plan.export.tolerance
    assert result.rows == 8 and result.inputs_from == "validation split"
    graph = onnx.load(str(target)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]  # no temporary file left

    # Independently: onnxruntime on the file, at 3 rows, against predict() of the model as trained.
    fam, _ = model_family(plan)
    x = fresh_inputs(plan, 3)
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {graph.input[0].name: x})[0]
    want = np.asarray(fam.predict(nnx.merge(graphdef, params), x), dtype=np.float32)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float(np.max(np.abs(got - want))) <= agree


def test_an_unmeetable_tolerance_is_refused_and_the_target_is_untouched(tmp_path):
    plan, _, params = model(GPT)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    with pytest.raises(ExportError) as info:
        export_onnx(plan, params, 0, target, tolerance=1e-12)  # float32 XLA and onnxruntime never agree bitwise here
    message = info.value.render()
    assert "more than the tolerance 1e-12" in message and "nothing was written" in message
    assert str(target) in message
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    plan, _, params = model(GPT)
    target = tmp_path_factory.mktemp("good") / "model.onnx"
    export_onnx(plan, params, 0, target)
    fam, f32 = inference_model(plan, jax.tree.map(np.asarray, params))
    reference = jax.jit(lambda x: fam.predict(f32, x))
    inputs, _ = held_out_inputs(plan)
    return target, (lambda x: np.asarray(reference(x))), inputs, plan.export.tolerance


def test_the_good_export_verifies(good_export):
    path, reference, inputs, tol = good_export
    assert verify_file(path, reference, inputs, tol) <= tol


def test_tampered_weights_are_refused(good_export, tmp_path):
    path, reference, inputs, tol = good_export
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(biggest)
    changed = weights + np.random.default_rng(0).normal(0, 0.1, weights.shape).astype(weights.dtype)
    biggest.CopyFrom(numpy_helper.from_array(changed, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, str(tampered))
    onnx.checker.check_model(str(tampered))  # still a valid graph: only the numbers are wrong
    with pytest.raises(ExportError, match=r"logits differ from JAX's by .* more than the tolerance"):
        verify_file(tampered, reference, inputs, tol)


def test_a_broken_graph_is_refused(good_export, tmp_path):
    path, reference, inputs, tol = good_export
    model = onnx.load(str(path))
    del model.graph.node[len(model.graph.node) // 2]  # a value later nodes read is never produced
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ExportError, match="fails onnx.checker"):
        verify_file(broken, reference, inputs, tol)


def test_a_truncated_file_is_refused(good_export, tmp_path):
    path, reference, inputs, tol = good_export
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportError, match="fails onnx.checker"):
        verify_file(cut, reference, inputs, tol)
