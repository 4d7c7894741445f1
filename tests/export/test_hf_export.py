"""Hugging Face export: the golden fixtures (tests/fixtures/hf) imported and exported again come back
bit for bit, a trained run's export imported again gives the run's logits, and what must be refused is.

The fixtures were written by transformers (see their README.md); that a capidsl export also loads
in transformers is checked by hand with tests/fixtures/hf/check_with_transformers.py (torch is not
a test dependency); the numbers are in docs/export.md.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from capidsl.cli.main import main as cli
from capidsl.exec.generate import load_run
from capidsl.exec.loop import run
from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import init_state, model_family
from capidsl.export import hf as hf_export
from capidsl.export.errors import ExportError
from capidsl.export.hf import export_hf
from capidsl.export.run_export import export_run
from capidsl.models.hf.config import read_config
from capidsl.models.hf.safetensors import Checkpoint
from capidsl.plan.compile import compile_plan
from capidsl.recipe import Recipe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
TOKENIZER = FIXTURES / "gpt2-tiny" / "tokenizer.json"


def recipe(source: Path, extra: str = "") -> Recipe:
    """The fixture's model, 24 tokens a row, on the README as text with the tiny BPE (8 fake devices)."""
    return Recipe.from_text(f"""
name: hf-export
model: {{init: {{from: "{source}"}}, seq_len: 24}}
data: {{source: text, path: "{FIXTURES / 'README.md'}", bad_documents: skip, tokenizer: "{TOKENIZER}"}}
training: {{batch_size: 8, duration: "2 steps", learning_rate: 1e-2}}
mesh: {{data: 2, fsdp: 2, tensor: 2}}
eval: {{every: null}}
{extra}""")


def tensors_of(directory: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint(directory)
    return {name: np.array(ckpt.array(name)) for name in ckpt.tensors}


def leftovers(target: Path) -> list[str]:
    """Temporary siblings of an export directory (none may survive an export, good or failed)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


_IMPORTED: dict[str, tuple] = {}


def imported(name: str):
    """(plan, params) of a fixture imported into the plan's shardings, untrained; built once per module."""
    if name not in _IMPORTED:
        plan = compile_plan(recipe(FIXTURES / name))
        _, state = init_state(plan, build_mesh(plan))
        _IMPORTED[name] = plan, state.params
    return _IMPORTED[name]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-gqa", "llama3-tied"])
def test_imported_weights_export_bit_for_bit_as_the_fixture(tmp_path, name):
    """GPT-2 (fused q|k|v, tied), Llama with GQA (untied, sharded on disk) and Llama 3 (tied, llama3 rope)."""
    plan, params = imported(name)
    target = tmp_path / "out"
    result = export_hf(plan, params, 0, target)
    assert result.max_abs_diff == 0.0 and result.architecture == json.loads(
        (FIXTURES / name / "config.json").read_text())["architectures"][0]
    assert result.files == ("config.json", "model.safetensors", "tokenizer.json")
    want, got = tensors_of(FIXTURES / name), tensors_of(target)
    assert sorted(got) == sorted(want)
    for n in want:
        assert (got[n].dtype, got[n].shape) == (want[n].dtype, want[n].shape), n
        assert got[n].tobytes() == want[n].tobytes(), n
    assert read_config(target).options == read_config(FIXTURES / name).options  # rope scaling included
    assert (target / "tokenizer.json").read_bytes() == TOKENIZER.read_bytes()
    assert leftovers(target) == []


@pytest.mark.slow
def test_a_trained_run_exported_and_imported_again_gives_its_logits(tmp_path, capsys):
    """`capidsl run` 2 steps, `capidsl export --format hf`, then model.init.from the export."""
    run_dir = tmp_path / "run"
    run(compile_plan(recipe(FIXTURES / "llama-gqa")), run_dir)
    assert cli(["export", str(run_dir), "--format", "hf"]) == 0
    line = capsys.readouterr().out
    target = run_dir / "export" / "hf"
    assert f"exported {target} (LlamaForCausalLM, step 2, config.json + model.safetensors + tokenizer.json" in line
    trained = tensors_of(target)
    fixture = tensors_of(FIXTURES / "llama-gqa")
    assert all(trained[n].shape == fixture[n].shape for n in fixture)
    assert not np.array_equal(trained["lm_head.weight"], fixture["lm_head.weight"])  # it did train

    inputs = np.load(FIXTURES / "llama-gqa" / "golden.npz")["input_ids"].astype(np.int32)
    plan, graphdef, params, step = load_run(run_dir)
    fam, _ = model_family(plan)
    want = np.asarray(fam.predict(nnx.merge(graphdef, params), inputs))
    again = compile_plan(recipe(target))
    graphdef2, state = init_state(again, build_mesh(again))
    got = np.asarray(fam.predict(nnx.merge(graphdef2, state.params), inputs))
    assert step == 2 and np.abs(got - want).max() <= 1e-5


def one_device_params(plan):
    axes = plan.mesh.axes
    mesh = jax.make_mesh((1,) * len(axes), axes, devices=jax.devices()[:1], axis_types=(AxisType.Auto,) * len(axes))
    return init_state(plan, mesh)[1].params


def random_gpt(options: str):
    """A randomly initialised gpt of 2 layers, d_model 32, unless `options` (YAML flow keys) say otherwise."""
    base = {"vocab_size": "256", "seq_len": "16", "d_model": "32", "n_layers": "2", "n_heads": "4"}
    given = dict(kv.split(": ") for kv in options.split(", "))
    model = ", ".join(f"{k}: {v}" for k, v in (base | given).items())
    return compile_plan(Recipe.from_text(f"""
model: {{family: gpt, {model}}}
data: {{source: synthetic, synthetic_examples: 64}}
training: {{batch_size: 8, duration: "2 steps"}}
"""))


def test_a_gpt_without_a_hugging_face_architecture_is_refused_by_name(tmp_path):
    plan = random_gpt("position: learned, norm: rmsnorm")
    with pytest.raises(ExportError) as err:
        export_hf(plan, one_device_params(plan), 0, tmp_path / "out")
    assert "position learned, norm rmsnorm, mlp gelu" in str(err.value)
    assert "has no Hugging Face architecture" in str(err.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_a_random_llama_shaped_gpt_exports_and_verifies(tmp_path):
    """No init.from, a byte tokenizer (nothing to copy), untied, with biases."""
    plan = random_gpt("position: rope, norm: rmsnorm, mlp: swiglu, d_ff: 48, n_kv_heads: 2, tied_embeddings: false")
    result = export_hf(plan, one_device_params(plan), 0, tmp_path / "out")
    assert result.files == ("config.json", "model.safetensors") and result.max_abs_diff == 0.0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["attention_bias"], config["tie_word_embeddings"]) == (2, True, False)
    assert "model.layers.1.self_attn.k_proj.bias" in tensors_of(tmp_path / "out")


def test_a_bfloat16_lora_run_exports_its_adapters_merged_in_float32(tmp_path):
    """Adapters that have trained (lora_b not zero) on bfloat16 weights: the file holds kernel + scale·A@B
    computed in float32 (a bfloat16 merge would round it past the tolerance), and the check passes."""
    from capidsl.exec.mesh import param_path

    plan = compile_plan(Recipe.from_text("""
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4, position: rope,
        norm: rmsnorm, mlp: swiglu, d_ff: 48, tied_embeddings: false, bias: false,
        lora: {rank: 2, alpha: 8, targets: [attn.q, mlp.down]}}
data: {source: synthetic, synthetic_examples: 64}
training: {batch_size: 8, duration: "2 steps"}
precision: {params: bfloat16, compute: bfloat16}
"""))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda k, v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype) if param_path(k).endswith("lora_b") else v,
        one_device_params(plan))
    result = export_hf(plan, params, 0, tmp_path / "out")
    assert result.max_abs_diff <= 1e-4 and result.tensors == 21  # a plain Llama: no adapter tensors
    flat = {param_path(k): np.asarray(v, np.float32) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    q = flat["blocks.attn.q.kernel"][1] + 4.0 * flat["blocks.attn.q.lora_a"][1] @ flat["blocks.attn.q.lora_b"][1]
    written = tensors_of(tmp_path / "out")["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_allclose(written, q.T, rtol=0, atol=1e-6)
    assert np.max(np.abs(written - q.T.astype(jnp.bfloat16).astype(np.float32))) > 1e-4  # not rounded to bfloat16


def test_a_failed_verification_leaves_the_target_untouched(tmp_path, monkeypatch):
    plan, params = imported("gpt2-tiny")
    target = tmp_path / "out"
    export_hf(plan, params, 0, target)
    before = snapshot(target)
    write = hf_export.write_safetensors

    def off_by_a_little(path, entries, metadata=None):  # a writer that gets one tensor slightly wrong
        def bent(name, dtype, shape, produce):
            return (name, dtype, shape, (lambda: produce() * 1.01) if name.endswith("h.1.mlp.c_proj.weight") else produce)

        return write(path, [bent(*e) for e in entries], metadata)

    monkeypatch.setattr(hf_export, "write_safetensors", off_by_a_little)
    with pytest.raises(ExportError) as err:
        export_hf(plan, params, 0, target)
    assert "differ from JAX's by" in str(err.value) and "nothing was written" in str(err.value)
    assert snapshot(target) == before and leftovers(target) == []

    monkeypatch.setattr(hf_export, "write_safetensors", write)
    real = hf_export.write_directory

    def another_epsilon(directory, arch, cfg, arrays, tokenizer):  # config.json that reads back as another model
        count = real(directory, arch, cfg, arrays, tokenizer)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "layer_norm_epsilon": 1e-6}))
        return count

    monkeypatch.setattr(hf_export, "write_directory", another_epsilon)
    with pytest.raises(ExportError) as err:
        export_hf(plan, params, 0, target)
    assert "norm_eps: 1e-06 read, 1e-05 written" in str(err.value)
    assert snapshot(target) == before and leftovers(target) == []


def test_targets_that_are_not_an_export_are_never_replaced(tmp_path):
    plan, params = imported("llama3-tied")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds something other than a Hugging Face export"):
        export_hf(plan, params, 0, folder)
    assert snapshot(folder) == {"todo.txt": b"keep me"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="the target is a file"):
        export_hf(plan, params, 0, tmp_path / "file")
    with pytest.raises(ExportError, match="not to gs://"):
        export_run(str(tmp_path), fmt="hf", out="gs://bucket/models/x")
    assert cli(["export", str(tmp_path), "--format", "hf", "--opset", "17"]) == 2


def test_the_writer_holds_about_one_tensor_on_the_host(tmp_path):
    """numpy's allocations while writing (the tensor being assembled, the layer slice fetched, and some
    fixed overhead), against the model's size (21.5 MB, 41 of its largest tensors): streamed, not gathered."""
    plan = random_gpt("position: rope, norm: rmsnorm, mlp: swiglu, d_model: 256, n_layers: 8, d_ff: 512, "
                      "tied_embeddings: false, bias: false")
    arch, cfg = hf_export.architecture(plan)
    arrays = hf_export._by_path(one_device_params(plan))
    model = sum(a.nbytes for a in arrays.values())
    largest = max(a.nbytes // (a.shape[0] if "blocks." in p else 1) for p, a in arrays.items())
    (tmp_path / "out").mkdir()
    tracemalloc.start()
    try:
        hf_export.write_directory(tmp_path / "out", arch, cfg, arrays, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model > 30 * largest and peak < 4 * largest, (model, largest, peak)
