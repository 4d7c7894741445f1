"""Hugging Face checkpoints as starting weights, matched against transformers' own logits.

The fixtures under tests/fixtures/hf were made by transformers + torch (make_fixtures.py there,
not run by the suite): tiny random GPT-2 (tied), Llama with grouped-query attention (untied, in
three safetensors shards) and Llama 3 (one k/v head, tied, llama3 rope scaling), each with the
logits transformers computed on fixed inputs. Here capidsl plans each one, loads it into the
plan's shardings on the suite's 8 fake devices, and must give the same logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import init_state, model_family
from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.recipe import Recipe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "README.md"  # a small corpus for the tiny BPE


def recipe(source: Path, model: str = "", mesh: str = "{data: 2, fsdp: 2, tensor: 2}") -> Recipe:
    return Recipe.from_text(f"""
name: pretrained
model: {{init: {{from: "{source}"}}{model}}}
data: {{source: text, path: "{TEXT}", bad_documents: skip, tokenizer: "{FIXTURES / 'gpt2-tiny' / 'tokenizer.json'}"}}
training: {{batch_size: 8, duration: "2 steps"}}
mesh: {mesh}
eval: {{every: null}}
""")


def logits_of(plan, inputs: np.ndarray) -> np.ndarray:
    graphdef, state = init_state(plan, build_mesh(plan))
    fam, _ = model_family(plan)
    model = nnx.merge(graphdef, state.params)
    return np.asarray(fam.predict(model, inputs))


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-gqa", "llama3-tied"])
def test_logits_match_transformers(name):
    golden = np.load(FIXTURES / name / "golden.npz")
    plan = compile_plan(recipe(FIXTURES / name, ", seq_len: 24"))
    assert plan.model.init.architecture in ("GPT2LMHeadModel", "LlamaForCausalLM")
    got = logits_of(plan, golden["input_ids"].astype(np.int32))
    assert np.abs(got - golden["logits"]).max() <= 1e-4


def test_the_shape_comes_from_config_json_and_a_different_one_is_refused():
    plan = compile_plan(recipe(FIXTURES / "llama-gqa"))
    o = plan.model.options
    assert (o["d_model"], o["n_layers"], o["n_heads"], o["n_kv_heads"], o["seq_len"]) == (32, 2, 4, 2, 64)
    assert plan.model.init.files == ("model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                     "model-00003-of-00003.safetensors")
    from capidsl.plan.render import init_text

    assert "(LlamaForCausalLM, 3 safetensors files, 92.62 KiB F32 → float32): 21 tensors checked" in init_text(plan)
    with pytest.raises(PlanError) as err:
        compile_plan(recipe(FIXTURES / "llama-gqa", ", d_model: 64"))
    assert "model.d_model is 64 in the recipe but 32 in" in str(err.value)


def test_the_directory_tokenizer_is_taken_unless_the_recipe_names_one():
    plan = compile_plan(Recipe.from_text(f"""
model: {{init: {{from: "{FIXTURES / 'gpt2-tiny'}"}}, seq_len: 16}}
data: {{source: text, path: "{TEXT}"}}
training: {{batch_size: 8, duration: "2 steps"}}
"""))
    assert plan.data.tokenizer == str(FIXTURES / "gpt2-tiny" / "tokenizer.json")


def copy_fixture(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def plan_error(source: Path) -> str:
    with pytest.raises(PlanError) as err:
        compile_plan(recipe(source))
    return str(err.value)


def test_bad_checkpoints_are_clear_errors_listing_every_mismatch(tmp_path):
    assert "has no config.json" in plan_error(tmp_path)
    d = copy_fixture(tmp_path, "llama-gqa")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    assert "supported: GPT2LMHeadModel, LlamaForCausalLM" in plan_error(d)
    (d / "config.json").write_text(json.dumps({**config, "intermediate_size": 64, "num_hidden_layers": 3}))
    message = plan_error(d)
    assert "missing tensor model.layers.2.mlp.up_proj.weight" in message
    assert "tensor model.layers.0.mlp.gate_proj.weight: shape [48, 32] in the checkpoint, [64, 32] in the model" in message
    (d / "config.json").write_text(json.dumps(config))
    (d / "model-00002-of-00003.safetensors").unlink()
    assert "names 1 missing file(s): model-00002-of-00003.safetensors" in plan_error(d)
    d = copy_fixture(tmp_path, "llama3-tied")
    with open(d / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 12)  # a corrupted header length
    assert "header length 18446744073709551615 does not fit in a file of 76384 bytes" in plan_error(d)


def tiny(source: Path | None = None, model: str = "", step: str = "") -> Recipe:
    """A tiny byte-level gpt, or one starting from the run at `source`."""
    if source is None:
        m = "{vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 1, n_heads: 2}"
    else:
        m = f'{{init: {{from: "{source}"{step}}}{model}}}'
    return Recipe.from_text(f"""
model: {m}
data: {{source: text, path: "{TEXT}"}}
training: {{batch_size: 8, duration: "2 steps", seed: 3}}
eval: {{every: null}}
logging: {{progress: none, tensorboard: false}}
""")


def test_a_run_starts_a_new_run_from_its_parameters(tmp_path):
    import jax

    from capidsl.exec.generate import load_run
    from capidsl.runner import run

    run(compile_plan(tiny()), tmp_path / "a")
    plan = compile_plan(tiny(tmp_path / "a"))
    assert (plan.model.init.kind, plan.model.init.step, plan.model.options["d_model"]) == ("run", 2, 32)
    _, state = init_state(plan, build_mesh(plan))
    _, _, trained, _ = load_run(tmp_path / "a")
    same = jax.tree_util.tree_map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), state.params, trained)
    assert all(jax.tree_util.tree_leaves(same)) and int(state.step) == 0  # its weights, a fresh start
    with pytest.raises(PlanError) as err:
        compile_plan(tiny(tmp_path / "a", ", d_model: 64"))
    assert "does not fit the model (the recipe changes d_model 32 → 64)" in str(err.value)
    assert "parameter blocks.attn.k.kernel: shape [1, 32, 32] in the run, [1, 64, 64] in the model" in str(err.value)
    with pytest.raises(PlanError) as err:
        compile_plan(tiny(tmp_path / "a", step=", step: 7"))
    assert "has no checkpoint of step 7" in str(err.value)
    # the same run with adapters added (model.lora): its weights, frozen, and fresh adapters beside them
    from capidsl.exec.mesh import param_path
    from capidsl.models.family import is_adapter

    plan = compile_plan(tiny(tmp_path / "a", ", lora: {rank: 2}"))
    assert plan.model.init.tensors == len(jax.tree_util.tree_leaves(trained))  # adapters are not looked for
    _, state = init_state(plan, build_mesh(plan))
    run_params = {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(trained)}
    for k, v in jax.tree_util.tree_leaves_with_path(state.params):
        path = param_path(k)
        if is_adapter(path):
            assert path not in run_params and (np.any(v) if path.endswith("lora_a") else not np.any(v)), path
        else:
            assert np.array_equal(np.asarray(v), run_params[path]) and path in plan.optimizer.frozen, path


def test_placing_copies_cast_and_transpose_exactly_into_aligned_memory():
    import ml_dtypes

    from capidsl.exec.weights import ALIGN, aligned_empty, copy_into

    stored = np.random.default_rng(0).standard_normal((37, 50)).astype(ml_dtypes.bfloat16)  # nn.Linear [d_out, d_in]
    for src in (stored.T, stored.T[3:40, 5:30], stored, stored[:, 7:19]):
        for dtype in (ml_dtypes.bfloat16, np.float32):
            out = aligned_empty(src.shape, dtype)
            copy_into(out, src)
            assert out.ctypes.data % ALIGN == 0 and out.flags.c_contiguous
            assert np.array_equal(out, np.asarray(src, dtype)), (src.shape, dtype)
