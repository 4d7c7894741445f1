"""The mesh and named shardings follow the plan; a device count that differs is a clear RunError."""

import jax
import pytest
from jax.sharding import AxisType, PartitionSpec

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import build_mesh, named_sharding, spec_for_leaf, to_partition_spec
from plan_factory import make_plan


def test_partition_spec_from_mesh_spec():
    assert to_partition_spec(((), ("fsdp",), ("data", "fsdp"))) == PartitionSpec(None, "fsdp", ("data", "fsdp"))
    assert to_partition_spec(()) == PartitionSpec()


def test_mesh_has_the_plan_axes_all_auto():
    plan = make_plan("gpt", mesh={"data": 2, "fsdp": 2, "tensor": 2})
    mesh = build_mesh(plan)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == (2, 2, 2)
    assert set(mesh.axis_types) == {AxisType.Auto}
    assert named_sharding(mesh, (("fsdp",), ("tensor",))).spec == PartitionSpec("fsdp", "tensor")


def test_device_count_differs_from_the_plan():
    plan = make_plan("gpt", mesh={"data": 4})
    with pytest.raises(RunError) as e:
        build_mesh(plan, jax.devices()[:2])
    assert "needs 4 devices" in str(e.value) and e.value.hint


def test_derived_state_spec_follows_its_parameter():
    specs = {"w": ((4, 6), (("fsdp",), ("tensor",)))}
    assert spec_for_leaf(specs, "w", (4, 6)) == (("fsdp",), ("tensor",))
    assert spec_for_leaf(specs, "w", (4,)) == (("fsdp",),)  # adafactor row factor
    assert spec_for_leaf(specs, "w", (6,)) == (("tensor",),)  # adafactor column factor
    assert spec_for_leaf(specs, "count", ()) == ()
