"""ONNX for the breadth features: Capibara's graph takes and returns its state; pruned weights go out dense.

The Capibara checks run the family's stateful inference function (`predict_with_state`) through
jax2onnx and feed the exported graph's state output back in, as a caller streaming a long text
would; the reference is the training path (associative scan), not the export path. The pruned
check exports weights that the pruning transformation itself zeroed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from flax import nnx
from jax.sharding import AxisType
from onnx import numpy_helper

from capidsl.exec.pruning import magnitude_pruning
from capidsl.exec.state import init_state, model_family
from capidsl.export.onnx import export_onnx
from capidsl.lang import parse_pruning
from capidsl.plan.compile import compile_plan
from capidsl.plan.pruning import plan_pruning
from capidsl.recipe import Recipe
from capidsl.recipe.sections import PruningConfig

CAPIBARA = """
name: capibara-export
model: {family: capibara, vocab_size: 256, seq_len: 12, d_model: 32, n_layers: 2, d_state: 24, hidden_state: carry}
data: {source: synthetic, synthetic_examples: 256, validation_fraction: 0.25}
training: {batch_size: 8, duration: "10 steps", seed: 3}
"""
GPT = """
name: gpt-pruned-export
model: {family: gpt, vocab_size: 256, seq_len: 12, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
data: {source: synthetic, synthetic_examples: 256, validation_fraction: 0.25}
training: {batch_size: 16, duration: "10 steps", seed: 3}
"""


@pytest.fixture(scope="module", autouse=True)
def compile_cache(xla_cache):
    """The suite's persistent XLA cache (jax2onnx's first call compiles ~70 small functions)."""
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
    plan = compile_plan(Recipe.from_text(text, name="export.yaml"))
    axes = plan.mesh.axes
    one = jax.make_mesh((1,) * len(axes), axes, devices=jax.devices()[:1], axis_types=(AxisType.Auto,) * len(axes))
    graphdef, state = init_state(plan, one)
    return plan, graphdef, jax.tree.map(np.asarray, state.params)


@pytest.mark.slow
def test_capibara_exports_a_graph_that_takes_and_returns_the_state(tmp_path):
    import jax2onnx

    plan, graphdef, params = plan_and_params(CAPIBARA)
    fam, _ = model_family(plan)
    model = nnx.merge(graphdef, params)
    specs = [jax.ShapeDtypeStruct(("batch", 12), jnp.int32), jax.ShapeDtypeStruct(("batch", 2, 24), jnp.float32)]
    proto = jax2onnx.to_onnx(lambda x, s: fam.predict_with_state(model, x, s), specs, opset=plan.export.opset,
                             input_names=["inputs", "state"], output_names=["logits", "new_state"], return_mode="proto")
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["inputs", "state"]

    train_path = jax.jit(lambda x, s: nnx.merge(graphdef, params)(x, s))  # associative scan, as trained
    text = np.random.default_rng(0).integers(0, 256, (3, 36)).astype(np.int32)
    state_onnx = state_jax = np.zeros((3, 2, 24), np.float32)
    for i in range(3):  # three segments of one stream each, the state fed back by the caller
        segment = text[:, 12 * i:12 * (i + 1)]
        logits_onnx, state_onnx = session.run(None, {"inputs": segment, "state": state_onnx})
        logits_jax, state_jax = (np.asarray(a) for a in train_path(segment, state_jax))
        assert np.max(np.abs(logits_onnx - logits_jax)) < 1e-4 and np.max(np.abs(state_onnx - state_jax)) < 1e-4
    assert np.abs(state_onnx).max() > 1e-2

    # `capidsl export` writes the same stateful graph, verified from a zero and from a carried state
    result = export_onnx(plan, params, 0, tmp_path / "capibara.onnx")
    assert result.max_abs_diff <= plan.export.tolerance and result.family == "capibara"
    assert result.state_shape == ("batch", 2, 24) and "state" in result.describe()
    written = ort.InferenceSession(str(tmp_path / "capibara.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in written.get_inputs()] == ["inputs", "state"]
    assert [o.name for o in written.get_outputs()] == ["logits", "new_state"]
    logits, new_state = written.run(None, {"inputs": text[:, :12], "state": np.zeros((3, 2, 24), np.float32)})
    want_logits, want_state = (np.asarray(a) for a in train_path(text[:, :12], np.zeros((3, 2, 24), np.float32)))
    assert np.max(np.abs(logits - want_logits)) < 1e-4 and np.max(np.abs(new_state - want_state)) < 1e-4


@pytest.mark.slow
def test_pruned_weights_are_exported_dense_with_their_zeros(tmp_path):
    plan, _, params = plan_and_params(GPT)
    config = PruningConfig(schedule=parse_pruning("from 0% to 80% between 0 and 1 step"), scope="per_layer",
                           embeddings=False)
    plan = dataclasses.replace(plan, pruning=plan_pruning(config, plan.sharding, 10, 10, 1, lambda *a: None))
    tx = magnitude_pruning(plan)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)  # step 1 is the event: 80% of each matrix
    pruned = jax.tree.map(np.asarray, jax.tree.map(jnp.add, params, updates))
    target = tmp_path / "pruned.onnx"
    export_onnx(plan, pruned, 1, target)
    graph = onnx.load(str(target)).graph
    assert not graph.sparse_initializer
    shapes = {tuple(p.shape) for p in plan.sharding.params if p.path in plan.pruning.params}
    arrays = [numpy_helper.to_array(t) for t in graph.initializer]
    zeros = sum(int(np.sum(a == 0)) for a in arrays if a.shape in shapes)
    assert zeros == plan.pruning.final_zeros > 0.79 * plan.pruning.weights
