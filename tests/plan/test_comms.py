"""The communication estimate against hand computations, which axes cross hosts, and how processes split batches.

The tiny recipe (tests/plan/conftest.py): GPT, vocab 256, seq 16, d_model 32, 2 layers, 4 heads,
d_ff 64, learned positions, biases, tied embeddings, float32; batch 16. Its parameters, by what
their dimensions are called:
  with an `embed` dimension (FSDP splits these): wte 256·32, wpe 16·32, q/k/v/o kernels 4·2·32·32,
    o and down biases 2·2·32, up and down kernels 2·2·32·64                 → 25 216 scalars
  without (replicated under FSDP): the layers' norms 4·2·32, the final norm 2·32, q/k/v biases
    3·2·32, the up bias 2·64                                                 →    640 scalars
"""

from __future__ import annotations

import dataclasses

import pytest

from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.render import comms_text
from capidsl.plan.topology import simulated

EMBED = 256 * 32 + 16 * 32 + 4 * 2 * 32 * 32 + 2 * 2 * 32 + 2 * 2 * 32 * 64
OTHER = 4 * 2 * 32 + 2 * 32 + 3 * 2 * 32 + 2 * 64
F32 = 4


def plan(tiny, devices: int = 8, kind: str = "cpu", processes: int | None = None, **mesh):
    sets = [f"mesh.{axis}={size}" for axis, size in ({"data": 1} | mesh).items()]
    return compile_plan(tiny(*sets), simulated(kind, devices, processes=processes))


def test_the_two_lists_cover_every_parameter(tiny):
    assert plan(tiny, data=8).model.param_count == EMBED + OTHER == 25_856


def test_data_parallel_all_reduces_every_gradient(tiny):
    c = plan(tiny, data=8).comms  # everything replicated: R = 8 for every parameter, one micro-batch
    assert c.data_all_reduce == round(2 * 7 / 8 * (EMBED + OTHER) * F32) == 180_992
    assert c.fsdp_all_gather == c.fsdp_reduce_scatter == c.tensor_all_reduce == 0


def test_fsdp_gathers_and_scatters_what_it_splits_and_all_reduces_the_rest(tiny):
    p = plan(tiny, fsdp=8)
    c = p.comms
    shard = EMBED * F32 // 8  # bytes of the split parameters each device holds
    assert c.fsdp_all_gather == 2 * 7 * shard == 176_512  # forward and backward, each gathering 7 shards
    assert c.fsdp_reduce_scatter == 7 * shard == 88_256
    assert c.data_all_reduce == round(2 * 7 / 8 * OTHER * F32) == 4_480  # the replicated ones, over fsdp's 8
    # Two micro-batches per step: every term twice (ZeRO-3 gathers and reduces per micro-batch).
    acc = compile_plan(tiny("mesh.data=1", "mesh.fsdp=8", "training.gradient_accumulation_steps=2"),
                       simulated("cpu", 8))
    assert acc.batch.accumulation == 2
    c2 = acc.comms
    assert (c2.fsdp_all_gather, c2.fsdp_reduce_scatter, c2.data_all_reduce) == (2 * 176_512, 2 * 88_256, 2 * 4_480)


def test_tensor_parallel_all_reduces_four_activations_per_layer(tiny):
    p = plan(tiny, data=4, tensor=2)
    c = p.comms
    m, t, d = 4, 16, 32  # micro-batch rows per device (16 / data 4), sequence, width
    activation = m * t * d * F32
    ring = 2 * (2 - 1) / 2  # all-reduce over 2 devices
    # Per layer: attention's o and the MLP's down are row-parallel (forward all-reduce of their output);
    # q/k/v (one module) and up are column-parallel (backward all-reduce of their input's gradient).
    assert c.layers == 2 and c.tensor_per_layer == 4 * ring * activation == 32_768
    # The vocabulary-split embedding lookup adds one forward all-reduce outside the layers.
    assert c.tensor_all_reduce == 2 * 32_768 + ring * activation == 73_728
    # Gradients: every parameter is replicated over data=4; their bytes per device are the plan's.
    assert c.data_all_reduce == round(2 * 3 / 4 * p.memory.params) == 80_448
    assert "tensor all-reduce 32.00 KiB/layer × 2 + 8.00 KiB = 72.00 KiB" in comms_text(p)


def test_the_axes_that_cross_hosts(tiny):
    # 16 H100s on 2 hosts of 8: data=2 × fsdp=2 × tensor=4 keeps tensor and fsdp inside a host.
    assert plan(tiny, 16, "h100", data=2, fsdp=2, tensor=4).comms.across_hosts == ("data",)
    assert plan(tiny, 16, "h100", fsdp=16).comms.across_hosts == ("fsdp",)
    crossing = plan(tiny, 16, "h100", tensor=16)
    assert crossing.comms.across_hosts == ("tensor",)
    assert "tensor-crosses-hosts" in {lint.code for lint in crossing.lints}
    assert plan(tiny, 8, "h100", fsdp=8).comms.across_hosts == ()  # one host


def test_processes_load_their_own_rows_or_the_same_rows_as_their_replicas(tiny):
    assert plan(tiny, 16, "h100", data=16).batch.per_process_batch == 8  # 2 hosts, each half of the batch
    assert plan(tiny, 16, "h100", data=2, tensor=8).batch.per_process_batch == 8
    assert plan(tiny, 16, "h100", tensor=16).batch.per_process_batch == 16  # both hosts hold every row
    with pytest.raises(PlanError, match="neither divides nor spans whole hosts of 6 devices"):
        compile_plan(tiny("mesh.data=-1", "mesh.tensor=4", "training.batch_size=24"),
                     simulated("cpu", 12, processes=2))


def test_the_estimate_round_trips_and_stays_out_of_the_fingerprint(tiny):
    p = plan(tiny, 16, "h100", data=2, fsdp=2, tensor=4)
    assert type(p).loads(p.dumps()).comms == p.comms
    assert dataclasses.replace(p, comms=None).fingerprint == p.fingerprint
