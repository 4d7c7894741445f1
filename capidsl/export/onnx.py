"""ONNX export of a model family's inference function, verified by onnxruntime before it counts as written.

What is exported is `family.predict(model, inputs)` (float32 logits) with the trained parameters
baked in as initializers, converted by jax2onnx with the batch dimension symbolic ("batch"). A
stateful family (one with `predict_with_state` and `inference_state`, such as capibara) exports
`predict_with_state` instead: the graph takes `inputs` and `state` and returns `logits` and
`new_state`, so a caller streams a long text segment by segment, feeding the state back in.
Decisions:
- **Float32 graph.** The model is rebuilt with float32 parameters and computation whatever the
  training precision (bfloat16 values widen exactly): onnxruntime's CPU kernels are float32, and a
  float32 graph is what a deployment expects. Pruned or sparse weights are stored dense.
- **Verified from the file.** The serialized model is written to a temporary file beside the
  target, and that file is what `onnx.checker` (full check, with shape inference) and
  onnxruntime read. onnxruntime runs it on held-out inputs — the first rows of the plan's
  validation split (seeded random inputs if that split is empty) — at two batch sizes, and the
  largest absolute difference from JAX's outputs must be at most the plan's tolerance. A stateful
  graph is run from a zero state and again from the state JAX reached after that first segment.
- **Atomic.** Only a verified file is renamed onto the target (`os.replace`); on any failure
  the temporary file is removed and the target is untouched, so a failed export never leaves a
  half-written or unverified model behind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capidsl.export.errors import ExportError

# The batch key that holds the model's input, by the plan's data kind (capidsl.data's batch layout).
INPUT_KEY = {"lm": "inputs", "classification": "x"}
VERIFY_ROWS = 8  # rows of the held-out batch onnxruntime is checked on (and 1 row, for the symbolic batch)
BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxExport:
    """A written, verified ONNX file and the numbers of its verification."""

    path: str
    step: int  # the training step whose parameters it holds
    family: str
    opset: int
    input_name: str
    input_shape: tuple[Any, ...]  # ("batch", 16): the first dimension is symbolic
    input_dtype: str
    output_shape: tuple[Any, ...]
    max_abs_diff: float  # onnxruntime vs JAX outputs, over `rows` held-out rows and over 1 row
    tolerance: float
    rows: int
    inputs_from: str  # "validation split" | "seeded random inputs (the validation split is empty)"
    bytes: int
    sha256: str
    convert_s: float
    verify_s: float
    state_shape: tuple[Any, ...] | None = None  # ("batch", layers, d_state) when the graph takes and returns a state

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        stateful = f", state {self.state_shape} in and out" if self.state_shape else ""
        return (f"exported {self.path} ({self.family}{stateful}, step {self.step}, opset {self.opset}, "
                f"{self.bytes / 2**20:.2f} MiB) in {self.convert_s + self.verify_s:.1f} s; onnxruntime matches JAX "
                f"to {self.max_abs_diff:.3g} max abs diff on {self.rows} rows of the {self.inputs_from} "
                f"(tolerance {self.tolerance:g})")


def host_params(params):
    """The parameters as whole numpy arrays on this host (gathered across processes when there are several)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(params, tiled=True)
    return jax.tree.map(np.asarray, params)


def inference_model(plan, params):
    """The plan's model rebuilt in float32 with `params` (host arrays) as its weights."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.exec.state import model_family

    fam, cfg = model_family(plan)
    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32,
                                                compute_dtype=jnp.float32, remat="none"))
    graphdef, shapes = nnx.split(abstract, nnx.Param)
    want = {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(shapes)}
    dense = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, dtype=np.float32)), params)
    have = {k: v.shape for k, v in jax.tree_util.tree_leaves_with_path(dense)}
    if want != have:
        missing = sorted(str(k) for k in set(want) ^ set(have)) or sorted(
            str(k) for k in want if want[k] != have.get(k))
        raise ExportError(f"the checkpoint's parameters do not fit the {plan.model.family} model of the plan "
                          f"(first difference: {missing[0]})", subject=f"model {plan.model.family}")
    return fam, nnx.merge(graphdef, dense)


def held_out_inputs(plan, rows: int = VERIFY_ROWS) -> tuple[np.ndarray, str]:
    """Model inputs no training step has seen: the validation split's first rows, else seeded random ones."""
    from capidsl.data import eval_batches

    key = INPUT_KEY.get(plan.data.kind)
    if key is None:
        raise ExportError(f"no known model input for data of kind {plan.data.kind!r}", subject="export",
                          hint=f"known kinds: {', '.join(INPUT_KEY)}")
    batches = eval_batches(plan.data, global_batch=plan.batch.global_batch, process_index=0, process_count=1,
                           max_batches=1)
    if batches and len(batches[0][key]):
        return np.asarray(batches[0][key][:rows]), "validation split"
    rng = np.random.default_rng(plan.seed)
    if plan.data.kind == "lm":
        x = rng.integers(0, plan.data.vocab_size, (rows, plan.batch.seq_len), dtype=np.int32)
    else:
        x = rng.standard_normal((rows, plan.data.input_dim)).astype(np.float32)
    return x, "seeded random inputs (the validation split is empty)"


@contextmanager
def _quiet(*names: str):
    """jax2onnx's IR serializer logs a warning per untyped shape constant; they are not ours to act on."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def convert(fn, example, *, opset: int, input_name, family: str, output_names=("logits",)):
    """jax2onnx's ModelProto of `fn`, the first dimension of every input symbolic.

    `example` is one array (and `input_name` one name) or a tuple of them, one per argument of `fn`."""
    import jax
    import jax2onnx

    examples = example if isinstance(example, tuple) else (example,)
    names = list(input_name) if isinstance(input_name, (tuple, list)) else [input_name]
    specs = [jax.ShapeDtypeStruct((BATCH_DIM, *x.shape[1:]), x.dtype) for x in examples]
    try:
        with _quiet("onnx_ir", "jax2onnx"):
            return jax2onnx.to_onnx(fn, specs, opset=opset, model_name=f"capidsl_{family}",
                                    input_names=names, output_names=list(output_names), return_mode="proto")
    except Exception as err:  # noqa: BLE001 - any converter failure is one fact for the user
        hint = ("jax2onnx has no ONNX form for an operation in this family's predict(); the family must avoid it "
                "or a jax2onnx plugin must provide it" if isinstance(err, NotImplementedError)
                else "try another export.opset (--opset)")
        raise ExportError(f"jax2onnx cannot convert the {family} model: {type(err).__name__}: {str(err)[:300]}",
                          subject=f"model {family}", hint=hint) from err


def _cases(inputs) -> list[tuple[np.ndarray, ...]]:
    """The argument tuples to run: each given case (one array, a tuple of arrays, or a list of
    tuples) as it is and cut to its first row (the symbolic batch at size 1)."""
    given = inputs if isinstance(inputs, list) else [inputs if isinstance(inputs, tuple) else (inputs,)]
    return [c for case in given for c in (case, tuple(a[:1] for a in case))]


def verify_file(path: Path, reference, inputs, tolerance: float, *, subject: str | None = None) -> float:
    """Check the ONNX file at `path` and return its max abs difference from `reference(*inputs)`.

    `inputs` is one array, a tuple of arrays (one per graph input) or a list of such tuples;
    `reference` returns an array or a tuple of arrays (one per graph output). Raises ExportError
    when the graph fails `onnx.checker`, its batch dimension is not symbolic, onnxruntime cannot
    run it, or an output differs from JAX's by more than `tolerance`.
    """
    import onnx
    import onnxruntime as ort

    subject = subject or str(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001 - ValidationError, InferenceError, DecodeError
        raise ExportError(f"the ONNX graph fails onnx.checker: {str(err).strip()[:300]}", subject=subject) from err
    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        raise ExportError("the exported graph's batch dimension is not symbolic", subject=subject)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        worst, worst_out = 0.0, outputs[0] if outputs else "outputs"
        for case in _cases(inputs):
            wanted = reference(*case)
            wanted = wanted if isinstance(wanted, tuple) else (wanted,)
            got_all = session.run(None, dict(zip(names, case)))
            for out, want, got in zip(outputs, wanted, got_all):
                want = np.asarray(want, dtype=np.float32)
                if not np.all(np.isfinite(want)):
                    raise ExportError("the model's own JAX outputs are not finite: there is nothing to verify against",
                                      subject=subject, hint="export a checkpoint with finite weights (--step)")
                if got.shape != want.shape:
                    raise ExportError(f"onnxruntime returns {out} of shape {got.shape}, JAX {want.shape}", subject=subject)
                diff = float(np.max(np.abs(got.astype(np.float32) - want))) if want.size else 0.0
                if not math.isfinite(diff) or diff > worst:
                    worst, worst_out = diff, out
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime's pybind errors have no common base worth naming
        raise ExportError(f"onnxruntime cannot run the model: {type(err).__name__}: {str(err)[:300]}",
                          subject=subject) from err
    if not math.isfinite(worst) or worst > tolerance:
        raise ExportError(f"onnxruntime's {worst_out} differ from JAX's by {worst:.3g} (max abs), more than the tolerance "
                          f"{tolerance:g}; nothing was written", subject=subject,
                          hint="raise export.tolerance (--tolerance) if that precision is acceptable, "
                          "or try another export.opset (--opset)")
    return worst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_verified(proto, target: Path, reference, inputs, tolerance: float) -> tuple[float, int, str]:
    """Serialize `proto` beside `target`, verify that file, and only then rename it onto `target`.

    Returns (max abs diff, bytes, sha256). On failure nothing is left at or beside `target`.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = proto.SerializeToString()
    except ValueError as err:  # protobuf's 2 GiB limit for one message
        raise ExportError(f"the model is too large for a single-file ONNX model ({err})", subject=str(target)) from err
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        diff = verify_file(tmp, reference, inputs, tolerance, subject=str(target))
        digest, size = _sha256(tmp), tmp.stat().st_size
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return diff, size, digest


def export_onnx(plan, params, step: int, target: str | os.PathLike, *, opset: int | None = None,
                tolerance: float | None = None) -> OnnxExport:
    """Export `params` (host or device arrays of the plan's model) to the local path `target`, verified."""
    import jax

    opset = int(opset if opset is not None else plan.export.opset)
    tolerance = float(tolerance if tolerance is not None else plan.export.tolerance)
    if not tolerance > 0:
        raise ExportError(f"the tolerance must be above 0, not {tolerance:g}", subject="export.tolerance")
    target = Path(target)
    t0 = time.perf_counter()
    fam, model = inference_model(plan, params)
    inputs, where = held_out_inputs(plan)
    input_name = INPUT_KEY[plan.data.kind]
    stateful = callable(getattr(fam, "predict_with_state", None)) and callable(getattr(fam, "inference_state", None))

    if stateful:
        def predict(x, state):
            return fam.predict_with_state(model, x, state)

        cfg = fam.normalize(plan.model.options)
        zeros = np.zeros(fam.inference_state(cfg, len(inputs)), np.float32)
        proto = convert(predict, (inputs, zeros), opset=opset, input_name=(input_name, "state"),
                        family=plan.model.family, output_names=("logits", "new_state"))
    else:
        def predict(x):
            return fam.predict(model, x)

        proto = convert(predict, inputs, opset=opset, input_name=input_name, family=plan.model.family)
    convert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    jitted = jax.jit(predict)

    def reference(*args):
        out = jitted(*args)
        return tuple(np.asarray(a) for a in out) if isinstance(out, tuple) else np.asarray(out)

    if stateful:  # from a zero state, then from the state the first segment left
        cases = [(inputs, zeros), (inputs, reference(inputs, zeros)[1])]
        diff, size, digest = write_verified(proto, target, reference, cases, tolerance)
        out_shape = reference(inputs[:1], zeros[:1])[0].shape[1:]
    else:
        diff, size, digest = write_verified(proto, target, reference, inputs, tolerance)
        out_shape = reference(inputs[:1]).shape[1:]
    return OnnxExport(
        path=str(target), step=int(step), family=plan.model.family, opset=opset, input_name=input_name,
        input_shape=(BATCH_DIM, *inputs.shape[1:]), input_dtype=str(inputs.dtype), output_shape=(BATCH_DIM, *out_shape),
        max_abs_diff=diff, tolerance=tolerance, rows=int(len(inputs)), inputs_from=where, bytes=size, sha256=digest,
        convert_s=round(convert_s, 3), verify_s=round(time.perf_counter() - t1, 3),
        state_shape=(BATCH_DIM, *zeros.shape[1:]) if stateful else None,
    )
