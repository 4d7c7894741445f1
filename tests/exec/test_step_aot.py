"""AOT memory: the compiled step's argument bytes are the plan's parameter and optimizer-state bytes."""

import pytest

from capidsl.exec.aot import compiled_memory
from capidsl.exec.errors import RunError
from plan_factory import make_plan

SMALL = 4096  # step counter, loss scale, adam's count, the batch: a few replicated scalars and rows


@pytest.mark.parametrize("mesh", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_argument_bytes_are_params_and_optimizer_state(mesh):
    plan = make_plan("gpt", mesh=mesh, d_model=64)
    mem = compiled_memory(plan)
    expected = plan.memory.params + plan.memory.opt_state  # per device, from the plan
    assert expected <= mem["argument_bytes"] <= expected + SMALL
    assert set(mem) == {"argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "peak_memory_bytes",
                        "generated_code_bytes"}
    assert mem["alias_bytes"] >= expected  # the donated state is updated in place


def test_too_few_devices_says_how_to_fake_them():
    plan = make_plan("gpt", mesh={"data": 16}, micro_batch=1)
    with pytest.raises(RunError) as e:
        compiled_memory(plan)
    assert "--xla_force_host_platform_device_count=16" in e.value.hint
