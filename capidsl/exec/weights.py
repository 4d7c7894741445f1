"""Pretrained starting weights placed straight into the plan's shardings.

Each parameter is made with `jax.make_array_from_callback`: every device asks for its own slice,
and the slice is cut from its tensor, read from the safetensors file into one reused scratch
buffer, cast to the plan's parameter dtype and put in gpt's orientation in one copy, and put on
that device (on a CPU without another copy: see `aligned_empty`). Nothing
aliases the file (a checkpoint rewritten during the run cannot change or fault it), and no host
ever holds the whole model, so a model larger than one device (or one host's memory) loads as it
is sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import param_path
from capidsl.plan.plan import Plan


def pretrained_params(plan: Plan, mesh, abstract_params, shardings, fresh: dict | None = None):
    """The parameter state of `plan.model.init` with `shardings` (a tree like `abstract_params`).
    `fresh`: path -> newly drawn adapter (model.lora), for the adapters the checkpoint does not hold."""
    fresh = fresh or {}
    if plan.model.init.kind == "run":
        return _run_params(plan, mesh, abstract_params, shardings, fresh)
    from capidsl.models.errors import ModelError
    from capidsl.models.hf.layout import sources, tensors, view
    from capidsl.models.hf.safetensors import Checkpoint

    init = plan.model.init
    try:
        ckpt = Checkpoint(init.path)
    except ModelError as err:
        raise RunError(err.message, subject="model.init.from", hint=err.hint) from None
    options = plan.model.options
    where = sources(tensors(init.architecture, options, set(ckpt.tensors)))
    reader = _Reader(ckpt)

    def load(keypath, leaf, sharding):
        path = param_path(keypath)
        if path in fresh:
            return fresh[path]
        if path not in where:
            raise RunError(f"parameter {path} has no tensor in {init.path}", subject="model.init.from",
                           hint="compile the plan again: the checkpoint or capidsl changed since")
        parts = where[path]
        target = np.dtype(leaf.dtype)
        stacked = parts[0][1].layer is not None

        def piece(index):
            """This device's slice, copied out of the read buffer once (cast and transposed in the
            same copy) into a contiguous, 64-byte-aligned array: on a CPU, XLA takes such an array
            as the device buffer itself instead of copying it into freshly faulted-in memory."""
            if not stacked:
                tensor, part = parts[0]
                one = view(reader.read(tensor.name), tensor, part)[index]
                out = aligned_empty(one.shape, target)
                copy_into(out, one)
                return out
            layers = range(*index[0].indices(len(parts)))
            out = None
            for j, i in enumerate(layers):
                tensor, part = parts[i]
                one = view(reader.read(tensor.name), tensor, part)[index[1:]]
                if out is None:
                    out = aligned_empty((len(layers), *one.shape), target)
                copy_into(out[j], one)  # before the scratch buffer is read into again
            return out

        return jax.make_array_from_callback(tuple(leaf.shape), sharding, piece)

    try:
        return jax.tree_util.tree_map_with_path(load, abstract_params, shardings)
    finally:
        reader.close()


ALIGN = 64  # bytes: XLA's CPU client aliases a contiguous numpy array this aligned instead of copying it
ROWS = 16  # rows per block of a transposing copy


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ALIGN-byte boundary."""
    import math

    n = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(n + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + n].view(dtype).reshape(shape)


def copy_into(out: np.ndarray, src: np.ndarray) -> None:
    """out[...] = src, cast to out's dtype. A transposed 2-D `src` (nn.Linear's stored [d_out, d_in]
    seen as [d_in, d_out]) is copied in blocks of ROWS stored rows, through unsigned-integer views
    when no cast is needed: numpy copies bfloat16 element by element through ml_dtypes, and a
    whole-matrix transposing copy walks memory column-wise (measured ~5x slower on a 2-core VM)."""
    if src.ndim != 2 or src.strides[0] >= src.strides[1]:
        np.copyto(out, src, casting="unsafe")
        return
    stored = src.T
    if out.dtype == stored.dtype and out.dtype.itemsize in (2, 4, 8):
        raw = np.dtype(f"u{out.dtype.itemsize}")
        out, stored = out.view(raw), stored.view(raw)
    for i in range(0, stored.shape[0], ROWS):
        np.copyto(out[:, i:i + ROWS], stored[i:i + ROWS].T, casting="unsafe")


class _Reader:
    """Whole tensors read (pread) into one reused scratch buffer: the host holds one tensor of the
    checkpoint at a time besides what it has placed, and no page of the file stays mapped."""

    def __init__(self, ckpt):
        self.ckpt, self.files, self.scratch = ckpt, {}, None

    def read(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype, valid until the next read."""
        import math

        from capidsl.models.hf.safetensors import DTYPES

        t = self.ckpt.tensors[name]
        dt = np.dtype(DTYPES[t.dtype])
        n = math.prod(t.shape) * dt.itemsize
        if self.scratch is None or self.scratch.size < n:
            self.scratch = np.empty(max(n, max(math.prod(x.shape) * np.dtype(DTYPES[x.dtype]).itemsize
                                                for x in self.ckpt.tensors.values())), np.uint8)
        if t.file not in self.files:
            self.files[t.file] = open(t.file, "rb")  # noqa: SIM115 (closed by close())
        f = self.files[t.file]
        f.seek(t.begin)
        got = f.readinto(memoryview(self.scratch)[:n])
        if got != n:
            raise RunError(f"{t.file}: tensor {name} is cut short ({got} of {n} bytes)", subject="model.init.from",
                           hint="the file changed since the plan was compiled: compile it again")
        return self.scratch[:n].view(dt).reshape(t.shape)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
        self.scratch = None


def _run_params(plan: Plan, mesh, abstract_params, shardings, fresh: dict):
    """A capidsl run's parameters at the plan's step, restored into this run's mesh and dtype.

    The whole train state of that step is restored (orbax reads what it was written as), sharded
    as the old plan shards it but on this run's mesh; the optimizer state is then dropped.
    Adapters the run did not have come from `fresh`."""
    from capidsl import rundir
    from capidsl.exec.checkpoint import Checkpoints
    from capidsl.exec.state import abstract_state

    init = plan.model.init
    try:
        old = Plan.loads(rundir.read_plan_text(init.path))
    except rundir.RunDirError as err:
        raise RunError(err.message, subject="model.init.from", hint=err.hint) from None
    _, abstract = abstract_state(old, mesh)
    ckpts = Checkpoints(init.path, old.checkpoint)
    try:
        params = ckpts.restore_state(init.step, abstract).params
    finally:
        ckpts.close()
    target = jnp.dtype(plan.precision.param_dtype)
    old_params = {param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}

    def place(keypath, _, sharding):
        path = param_path(keypath)
        if path not in old_params:
            return fresh[path]
        return jax.device_put(old_params[path].astype(target), sharding)

    return jax.tree_util.tree_map_with_path(place, abstract_params, shardings)
