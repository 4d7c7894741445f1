"""The temp estimate: saved residuals counted by autodiff, split as the mesh splits them, and the other terms.

Hand computations on the tiny GPT of conftest (d_model 32, 4 heads, d_ff 64, 2 layers, vocab 256),
with seq_len 32 so that the attention probabilities [rows, 4, 32, 32] are the largest layer tensor;
then the estimate against XLA's compiled temp size on the suite's 8 fake CPU devices, within a band.
"""

import pytest

from capidsl.models import get_family
from capidsl.models.gpt import GPTFamily
from capidsl.plan import memory
from capidsl.plan.activations import activation_model, saved_residuals
from capidsl.plan.compile import compile_plan
from capidsl.plan.plan import freeze_options
from capidsl.plan.topology import simulated

D, HEADS, FF, LAYERS, VOCAB, SEQ = 32, 4, 64, 2, 256, 32
F32 = 4


def residuals(plan, rows, remat=None):
    fam = get_family(plan.model.family)
    return saved_residuals(fam, fam.normalize(plan.model.options), rows=rows, sharding=plan.sharding, mesh=plan.mesh,
                           param_dtype=plan.precision.param_dtype, compute_dtype=plan.precision.compute_dtype,
                           remat=remat or plan.model.remat)


def terms(plan):
    return dict(plan.memory.breakdown)


def test_full_remat_saves_exactly_the_block_inputs(tiny):
    plan = compile_plan(tiny(f"model.seq_len={SEQ}", "training.remat=full"), simulated("cpu", 1))
    res = residuals(plan, rows=3)
    stacked = [r for r in res if r.layers > 1]
    assert [(r.shape, r.dtype) for r in stacked] == [((LAYERS, 3, SEQ, D), "float32")]  # Korthikanti: 2sbh per layer
    softmax = [r for r in res if r.shape == (3, SEQ, VOCAB)]  # the loss keeps exp(logits) in float32
    assert [r.bytes_per_device for r in softmax] == [3 * SEQ * VOCAB * F32]


def test_tensor_parallelism_splits_heads_mlp_and_vocab_but_not_the_residual_stream(tiny):
    whole = residuals(compile_plan(tiny(f"model.seq_len={SEQ}", "mesh.data=1"), simulated("cpu", 1)), rows=3)
    split = residuals(compile_plan(tiny(f"model.seq_len={SEQ}", "mesh.data=1", "mesh.tensor=2"), simulated("cpu", 2)), rows=3)
    assert [r.shape for r in whole] == [r.shape for r in split]
    by_shape = {}
    for w, s in zip(whole, split):
        by_shape.setdefault(w.shape, set()).add(w.bytes_per_device // s.bytes_per_device)
    assert by_shape[(LAYERS, 3, SEQ, FF)] == {2}  # MLP units over tensor
    assert by_shape[(LAYERS, 3, HEADS, SEQ, SEQ)] == {2}  # attention probabilities: heads over tensor
    assert by_shape[(LAYERS, 3, SEQ, HEADS, D // HEADS)] == {2}  # q, k, v
    assert by_shape[(3, SEQ, VOCAB)] == {2}  # the logits' softmax: vocabulary over tensor
    assert by_shape[(LAYERS, 3, SEQ, D)] == {1, 2}  # norm inputs/outputs whole; only the input of o is split


def test_saved_bytes_are_affine_in_the_rows(tiny):
    plan = compile_plan(tiny(f"model.seq_len={SEQ}"), simulated("cpu", 1))
    model = activation_model(get_family("gpt"), freeze_options(get_family("gpt").normalize(plan.model.options)),
                             plan.sharding, plan.mesh, "float32", "float32", "none")
    for rows in (1, 3, 7):
        assert model.saved_bytes(rows) == sum(r.bytes_per_device for r in residuals(plan, rows))
        assert model.largest_layer_tensor(rows) == rows * HEADS * SEQ * SEQ * F32  # the attention probabilities


def test_terms_by_hand(tiny):
    plan = compile_plan(tiny(f"model.seq_len={SEQ}", "mesh.data=2", "training.gradient_accumulation_steps=2"),
                        simulated("cpu", 2))
    rows = plan.batch.micro_batch
    t = terms(plan)
    n = plan.model.param_count
    assert t["gradients f32"] == n * F32  # replicated over data
    # adamw's two moments once more; the micro-batch's gradient set (n·4) fits in the same space
    assert t["optimizer copy or accumulation"] == plan.memory.opt_state == 2 * n * F32
    assert t["backward working set"] == 2 * rows * HEADS * SEQ * SEQ * F32
    assert t["saved activations"] == sum(r.bytes_per_device for r in residuals(plan, rows))
    m = plan.memory
    assert m.temp == sum(t.values()) and m.total == m.params + m.opt_state + m.batch + m.state + m.temp
    assert "fsdp gather" not in t

    assert terms(compile_plan(tiny(f"model.seq_len={SEQ}"), simulated("cpu", 1)))["optimizer copy"] == 2 * n * F32

    full = compile_plan(tiny(f"model.seq_len={SEQ}", "training.remat=full"), simulated("cpu", 1))
    assert terms(full)["backward working set"] == 3 * full.batch.micro_batch * HEADS * SEQ * SEQ * F32  # + recomputed
    split = compile_plan(tiny(f"model.seq_len={SEQ}", "training.remat=full", "mesh.data=1", "mesh.tensor=2"),
                         simulated("cpu", 2))
    rows = split.batch.micro_batch
    one_layer = sum(r.bytes_per_device // r.layers for r in residuals(split, rows, remat="none") if r.layers > 1)
    assert terms(split)["backward working set"] == one_layer  # the whole recomputed layer (Korthikanti §5)

    fsdp = compile_plan(tiny(f"model.seq_len={SEQ}", "mesh.data=1", "mesh.fsdp=2"), simulated("cpu", 2))
    layer = 4 * D * D + 2 * D * FF + 2 * D  # q, k, v, o, up, down kernels and the o/down biases: their embed axis is fsdp's
    assert terms(fsdp)["fsdp gather"] == max(layer, VOCAB * D) * (F32 + F32)  # gathered (float32 compute) + its gradient


def test_auto_micro_batch_picks_the_largest_that_fits_the_new_estimate(tiny):
    explicit = {m: compile_plan(tiny(f"model.seq_len={SEQ}", f"training.micro_batch={m}"), simulated("cpu", 1)).memory.total
                for m in (4, 8)}
    budget = (explicit[4] + explicit[8]) // 2
    auto = compile_plan(tiny(f"model.seq_len={SEQ}", "training.micro_batch=auto"), simulated("cpu", 1, memory=budget))
    assert (auto.batch.micro_batch, auto.batch.accumulation) == (4, 4)
    assert auto.memory.total == explicit[4] <= budget < explicit[8]


class _Untraceable(GPTFamily):
    def loss(self, model, batch, *, deterministic, rngs=None):
        raise NotImplementedError("this loss needs concrete values")


def test_a_loss_that_cannot_be_traced_falls_back_to_the_family_formula(tiny):
    plan = compile_plan(tiny(f"model.seq_len={SEQ}"), simulated("cpu", 1))
    fam = _Untraceable()
    fam.name = "untraceable"
    cfg = fam.normalize(plan.model.options)
    m = memory.estimate(family=fam, cfg=cfg, sharding=plan.sharding, mesh=plan.mesh, optimizer="adamw", momentum=0.0,
                        micro_batch=2, rows_per_device=2, batch_shapes=fam.batch_shapes(cfg, 1), compute_dtype="float32",
                        remat="none", device_memory=2**30)
    assert "NotImplementedError: this loss needs concrete values" in m.activation_formula
    logits = 2 * SEQ * VOCAB * F32
    assert m.activations == fam.activation_bytes_per_layer(cfg, 2, F32, "none") * LAYERS + logits


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("mesh.data=8", "training.batch_size=64"),
    ("mesh.data=4", "mesh.tensor=2", "training.batch_size=32", "training.remat=full", "training.gradient_accumulation_steps=2"),
    ("mesh.data=1", "mesh.fsdp=8", "training.batch_size=64"),
    ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "training.batch_size=32"),
    ("mesh.data=8", "training.batch_size=64", "training.layer_loop=scanned"),
], ids=["data8", "data4-tensor2-remat-accum", "fsdp8", "2x2x2", "data8-scanned"])
def test_the_estimate_tracks_xla_temp_within_a_band(tiny, overrides):
    """Unrolled (the tiny model's default without remat) and scanned layer loops; on FSDP meshes too: the models pin the embedding output to the batch's split (shard_rows), else
    GSPMD gives the gather the table's sharding and every device computes the whole global batch."""
    from capidsl.exec.aot import compiled_memory

    plan = compile_plan(tiny("model.seq_len=64", *overrides), simulated("cpu", 8))
    compiled = compiled_memory(plan)["temp_bytes"]
    assert 0.8 <= plan.memory.temp / compiled <= 1.25, (plan.memory.breakdown, compiled)
