"""The state is checked against the plan before anything is allocated."""

import dataclasses

import jax
import pytest

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import abstract_state
from capidsl.plan.plan import freeze_options
from plan_factory import make_plan


def test_a_model_that_differs_from_the_plan_is_refused():
    plan = make_plan("gpt")
    options = dict(plan.model.options, d_model=32)  # the plan's table was made for d_model=16
    stale = dataclasses.replace(plan, model=dataclasses.replace(plan.model, config=freeze_options(options)))
    with pytest.raises(RunError) as e:
        abstract_state(stale, build_mesh(plan, jax.devices()[:1]))
    assert "differ from the plan" in str(e.value)


def test_abstract_state_carries_the_plans_shardings():
    plan = make_plan("gpt", mesh={"fsdp": 4, "tensor": 2})
    _, abstract = abstract_state(plan, build_mesh(plan))
    leaves = jax.tree_util.tree_leaves(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in leaves)
    assert abstract.step.shape == () and abstract.step.dtype == "int32"
