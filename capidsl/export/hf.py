"""Hugging Face export: a gpt run as a directory transformers loads (config.json + model.safetensors).

`AutoModelForCausalLM.from_pretrained(DIR)` reads it as GPT2LMHeadModel or LlamaForCausalLM, the
architecture that computes what the run's gpt options compute (`architecture_of`); any other
combination of options is refused by name. The tensor table is the importer's own
(capidsl/models/hf/layout.py), read in the other direction. Decisions:
- **Float32 weights**, whatever the training precision (bfloat16 widens exactly), as transformers'
  own save_pretrained of a float32 model writes them and as the ONNX export does.
- **Streamed.** Each checkpoint tensor is assembled from one layer's slice of each parameter it
  holds (GPT-2's fused q|k|v, Llama's transposes), fetched from the device when the writer reaches
  it: the host holds about one tensor at a time, never the model.
- **Verified from the files.** The directory is written beside the target, then read back with
  capidsl's importer code: config.json must give the same gpt options, the tensors must be the
  ones the model needs, and the model built from them must give the logits of the run's own
  (float32) model on seeded random token rows within the tolerance.
- **Atomic.** Only a verified directory is renamed onto the target; an existing export there is
  replaced only then, and a target that is not an export (a non-empty folder without config.json
  and model.safetensors) is never replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capidsl.export.errors import ExportError
from capidsl.models.adapters import base_options
from capidsl.models.errors import ModelError
from capidsl.models.hf.config import SHAPE_KEYS, architecture_of, read_config, to_config
from capidsl.models.hf.layout import mismatches, sources, tensors, view
from capidsl.models.hf.safetensors import Checkpoint, write_safetensors

DTYPE = np.float32
VERIFY_ROWS = 4  # seeded random token rows the re-read model is checked on
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


@dataclass(frozen=True)
class HfExport:
    """A written, verified Hugging Face model directory and the numbers of its verification."""

    path: str
    step: int  # the training step whose parameters it holds
    architecture: str  # GPT2LMHeadModel | LlamaForCausalLM
    files: tuple[str, ...]
    tensors: int
    dtype: str
    bytes: int  # of the whole directory
    max_abs_diff: float  # logits of the re-read directory vs the run's model
    tolerance: float
    rows: int
    write_s: float
    verify_s: float
    format: str = "hf"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"exported {self.path} ({self.architecture}, step {self.step}, {' + '.join(self.files)}, {self.tensors} "
                f"{self.dtype} tensors, {self.bytes / 2**20:.2f} MiB) in {self.write_s + self.verify_s:.1f} s; "
                f"read back, its logits match JAX to {self.max_abs_diff:.3g} max abs diff on {self.rows} random rows "
                f"(tolerance {self.tolerance:g})")


def export_params(cfg: dict[str, Any], params):
    """(the plain gpt model's graphdef, its parameters): the run's own, or with adapters
    (model.lora) merged into the weights they adapt, so that everything below sees plain gpt."""
    import jax

    from capidsl.exec.mesh import param_path
    from capidsl.models.adapters import merge

    graphdef, abstract = _float32_model(base_options(cfg))
    merged = merge(_by_path(params), cfg)
    return graphdef, jax.tree_util.tree_map_with_path(lambda k, _: merged[param_path(k)], abstract)


def architecture(plan) -> tuple[str, dict[str, Any]]:
    """(the Hugging Face architecture, the normalised gpt options, adapters included) of the plan's
    model, or an ExportError."""
    from capidsl.exec.state import model_family

    if plan.model.family != "gpt":
        raise ExportError(f"a {plan.model.family} model has no Hugging Face form; only the gpt family maps onto one",
                          subject="--format hf", hint="export it as ONNX (--format onnx)")
    _, cfg = model_family(plan)
    try:
        return architecture_of(base_options(cfg)), cfg
    except ModelError as err:
        raise ExportError(err.message, subject="--format hf", hint=err.hint) from None


def _by_path(params) -> dict:
    import jax

    from capidsl.exec.mesh import param_path

    return {param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}


def _entries(layout, arrays: dict):
    """(name, dtype, shape, producer) per checkpoint tensor; a producer fetches its layer slices when called."""
    import jax.numpy as jnp

    from capidsl.exec.weights import copy_into

    def producer(t):
        def produce():
            out = np.empty(t.shape, DTYPE)
            for p in t.parts:
                piece = arrays[p.path] if p.layer is None else arrays[p.path][p.layer]
                host = np.asarray(piece.astype(jnp.float32))
                cols = slice(None) if p.columns is None else slice(*p.columns)
                copy_into(out[..., cols], host.T if t.transpose else host)  # transposes in row blocks
            return out
        return produce

    return [(t.name, DTYPE, t.shape, producer(t)) for t in layout]


def write_directory(directory: Path, arch: str, cfg: dict[str, Any], arrays: dict, tokenizer: str | None) -> int:
    """config.json, model.safetensors (streamed) and the tokenizer, into an existing empty directory;
    the number of tensors written."""
    layout = tensors(arch, cfg)
    unplaced = sorted(set(arrays) - set(sources(layout)))
    if unplaced:
        raise ExportError(f"{len(unplaced)} parameter(s) have no tensor in a {arch} checkpoint: {', '.join(unplaced[:6])}",
                          subject="--format hf", hint="only the plain gpt parameters map onto a Hugging Face model")
    write_safetensors(directory / WEIGHTS, _entries(layout, arrays), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(to_config(cfg, arch), indent=2) + "\n")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, directory / TOKENIZER)
    return len(layout)


def _tokenizer(plan) -> str | None:
    """The run's tokenizers JSON file, when it has one (a byte tokenizer has nothing to ship)."""
    path = plan.data.tokenizer
    if not path.endswith(".json"):
        return None
    if not Path(path).is_file():
        raise ExportError(f"the run's tokenizer {path} is gone", subject="data.tokenizer",
                          hint="put the file back: an export without its tokenizer cannot be used for text")
    return path


def _float32_model(cfg: dict[str, Any]):
    """(graphdef, abstract parameters) of the gpt model with options `cfg`, float32 parameters and computation."""
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.models import get_family

    fam = get_family("gpt")
    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32,
                                                compute_dtype=jnp.float32, remat="none"))
    graphdef, params = nnx.split(abstract, nnx.Param)
    return graphdef, params


def read_back(directory: Path, arch: str, cfg: dict[str, Any], like) -> Any:
    """The parameters of a written directory as a tree like `like` (with its shardings and, where it
    holds the file's values exactly, its dtypes), through capidsl's importer code: config.json and the
    tensor headers checked first, then one parameter at a time."""
    import jax

    from capidsl.exec.mesh import param_path

    try:
        options = read_config(directory).options
        ckpt = Checkpoint(directory)
        found = {t.name: (t.dtype, t.shape) for t in ckpt.tensors.values()}
        layout = tensors(arch, cfg, set(found))
    except ModelError as err:
        raise ExportError(f"the written directory does not read back: {err.message}", subject=str(directory)) from None
    changed = [f"{k}: {options[k]!r} read, {cfg[k]!r} written" for k in SHAPE_KEYS
               if k in options and k in cfg and options[k] != cfg[k]]
    problems = changed + mismatches(layout, found, cfg)
    if problems:
        raise ExportError(f"the written directory does not read back as the model: {'; '.join(problems[:8])}",
                          subject=str(directory))
    where = sources(layout)

    def load(keypath, leaf):
        parts = where[param_path(keypath)]
        slices = [np.asarray(view(ckpt.array(t.name), t, p), dtype=np.float32) for t, p in parts]
        value = slices[0] if parts[0][1].layer is None else np.stack(slices)
        narrow = value.astype(leaf.dtype)  # the run's dtype when that holds the file's values exactly
        if narrow.dtype != value.dtype and np.array_equal(narrow.astype(np.float32), value):
            value = narrow  # (a bfloat16 run's weights, widened on writing): half the memory, the same model
        return jax.device_put(value, leaf.sharding)

    return jax.tree_util.tree_map_with_path(load, like)


def _replace(tmp: Path, target: Path) -> None:
    """Rename the verified `tmp` onto `target`, moving an earlier export aside first and removing it after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
        os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except OSError:
        if old is not None:
            os.replace(old / target.name, target)
            old.rmdir()
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves survive a crash
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise ExportError("the target is a file; a Hugging Face export is a directory", subject=str(target),
                          hint="pass --out a directory path")
    if target.is_dir() and any(target.iterdir()) and not ((target / CONFIG).is_file() and (target / WEIGHTS).is_file()):
        raise ExportError("the target is a folder that holds something other than a Hugging Face export; "
                          "it is not replaced", subject=str(target), hint="pass --out a new or an export's directory")


def export_hf(plan, params, step: int, target: str | os.PathLike, *, tolerance: float | None = None) -> HfExport:
    """Export `params` (device or host arrays of the plan's gpt model) to the local directory `target`, verified."""
    import jax
    import jax.numpy as jnp

    tolerance = float(tolerance if tolerance is not None else plan.export.tolerance)
    if not tolerance > 0:
        raise ExportError(f"the tolerance must be above 0, not {tolerance:g}", subject="export.tolerance")
    arch, cfg = architecture(plan)
    target = Path(target)
    _check_target(target)
    tokenizer = _tokenizer(plan)
    params = jax.tree.map(jnp.asarray, params)  # in the run's dtype: each tensor is widened as it is written
    base_graphdef, base = export_params(cfg, params)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the export private
    try:
        t0 = time.perf_counter()
        count = write_directory(tmp, arch, base_options(cfg), _by_path(base), tokenizer)
        write_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        diff, rows = _verify(plan, tmp, arch, cfg, params, (base_graphdef, base), tolerance, subject=str(target))
        files = tuple(f for f in (CONFIG, WEIGHTS, TOKENIZER) if (tmp / f).is_file())
        size = sum((tmp / f).stat().st_size for f in files)
        _replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return HfExport(path=str(target), step=int(step), architecture=arch, files=files, tensors=count,
                    dtype=np.dtype(DTYPE).name, bytes=size, max_abs_diff=diff, tolerance=tolerance, rows=rows,
                    write_s=round(write_s, 3), verify_s=round(time.perf_counter() - t1, 3))


def _verify(plan, directory: Path, arch: str, cfg: dict[str, Any], params, base, tolerance: float, *,
            subject: str) -> tuple[float, int]:
    """(max abs logit difference, rows): the re-read directory's plain model against the run's own
    (its adapters unmerged: the check covers the merge too), or an ExportError."""
    import jax
    from flax import nnx

    from capidsl.models import get_family

    graphdef, _ = _float32_model(cfg)
    base_graphdef, base_params = base
    # Float32 computation on bfloat16 weights: XLA:CPU converts all of them up front (temporaries of
    # the float32 model's size, scanned or unrolled alike; measured with memory_analysis)
    fam = get_family("gpt")
    predict = jax.jit(lambda p, x: fam.predict(nnx.merge(graphdef, p), x))
    predict_base = jax.jit(lambda p, x: fam.predict(nnx.merge(base_graphdef, p), x))
    rng = np.random.default_rng(plan.seed)
    inputs = rng.integers(0, cfg["vocab_size"], (VERIFY_ROWS, plan.batch.seq_len), dtype=np.int32)
    want = np.asarray(predict(params, inputs), dtype=np.float32)  # first: its float32 temporaries are gone
    if not np.all(np.isfinite(want)):                             # before the re-read model is made
        raise ExportError("the model's own JAX logits are not finite: there is nothing to verify against",
                          subject=subject, hint="export a checkpoint with finite weights (--step)")
    written = read_back(directory, arch, base_options(cfg), base_params)
    got = np.asarray(predict_base(written, inputs), dtype=np.float32)
    diff = float(np.max(np.abs(got - want)))
    if not math.isfinite(diff) or diff > tolerance:
        raise ExportError(f"the written directory's logits differ from JAX's by {diff:.3g} (max abs), more than the "
                          f"tolerance {tolerance:g}; nothing was written", subject=subject,
                          hint="this is a bug in the export's tensor mapping: please report it")
    return diff, VERIFY_ROWS
