"""Parameter, gradient and optimizer-state bytes are arithmetic: they must match what XLA compiles.

The step's arguments are the train state (parameters + optimizer state + a few scalars) and the
batch, per device; the plan's figures for those must agree to within the small replicated tensors
(step counters, optimizer counts). Runs on the suite's 8 fake CPU devices.
"""

import pytest

from capidsl.exec.aot import compiled_memory
from capidsl.plan.compile import compile_plan
from capidsl.plan.topology import simulated


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [("mesh.data=8",), ("mesh.data=1", "mesh.fsdp=8"), ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")])
def test_state_bytes_match_compiled_arguments(tiny, mesh):
    plan = compile_plan(tiny(*mesh, "training.batch_size=32"), simulated("cpu", 8))
    compiled = compiled_memory(plan)
    m = plan.memory
    predicted = m.params + m.opt_state + m.batch
    small = 1024  # counters and the loss-scale/skip state: a few scalars per device
    assert predicted <= compiled["argument_bytes"] <= predicted + small, (predicted, compiled)
