"""The init step of planning: where a model's starting weights come from, checked before anything compiles.

`model.init.from` names a capidsl run directory (its parameters at `model.init.step`, checked by
name and shape against the model; a new run with a fresh optimizer) or a local Hugging Face model
directory (config.json + *.safetensors). Its
config.json supplies the gpt options (a recipe that writes a different shape is an error naming
both values; seq_len may be shorter than the model's context), its tokenizer.json the tokenizer
(unless the recipe names one), and every tensor's name, shape and dtype is checked against the
model from the safetensors headers alone, all mismatches listed at once. The InitPlan it makes
carries a digest of those headers, so the fingerprint changes when the weights do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from typing import Any

from capidsl.models.errors import ModelError
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import InitPlan

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def init_options(recipe, where) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the model's options: the recipe's over the checkpoint's, the Hugging Face model's facts or None)."""
    options = dict(recipe.model.options)
    init = recipe.model.init
    if init is None:
        return options, None
    from capidsl import rundir
    from capidsl.models.hf.config import SHAPE_KEYS, read_config

    source = Path(init["from"]).expanduser()
    if rundir.is_run(source) and not (source / "config.json").is_file():
        return _from_run(recipe, source, init.get("step", "last"), where)
    if init.get("step", "last") != "last":
        raise PlanError("model.init.step picks a checkpoint of a capidsl run; a Hugging Face directory has one set "
                        "of weights", subject="model.init.step", location=where("model.init.step"))
    if recipe.model.family != "gpt":
        raise PlanError(f"a Hugging Face model maps onto the gpt family, not {recipe.model.family!r}",
                        subject="model.family", location=where("model.family"))
    hf = read_config(source)
    conflicts = [f"model.{k} is {options[k]!r} in the recipe but {hf.options[k]!r} in {source / 'config.json'}"
                 for k in SHAPE_KEYS if k in options and k in hf.options and options[k] != hf.options[k]]
    if conflicts:
        raise PlanError("; ".join(conflicts), subject="model", location=where(f"model.{next(iter(conflicts)).split()[0][6:]}"),
                        hint="leave the model's shape keys out of the recipe: config.json decides them")
    merged = {**hf.options, **options}
    return merged, {"architecture": hf.architecture, "tokenizer": hf.tokenizer, "directory": source}


def _from_run(recipe, source: Path, step, where) -> tuple[dict[str, Any], dict[str, Any]]:
    """A capidsl run's model options (the recipe's written ones over them) and its checkpoint step."""
    import json

    from capidsl import rundir

    old = json.loads((source / rundir.PLAN).read_text())
    if old["model"]["family"] != recipe.model.family:
        raise PlanError(f"{source} trained model family {old['model']['family']!r}, the recipe names "
                        f"{recipe.model.family!r}", subject="model.family", location=where("model.family"))
    steps = rundir.checkpoint_steps(source)
    if not steps:
        raise PlanError(f"{source} has no checkpoint", subject="model.init.from", location=where("model.init.from"),
                        hint="train it first, or name a run that kept checkpoints")
    listed = f"its checkpoints: steps {', '.join(map(str, steps))}"
    if step == "last":
        chosen = rundir.final_params_step(source, steps)
    elif step == "best":
        chosen = rundir.best_step(source)
        if chosen is None or chosen not in steps:
            raise PlanError(f"{source} has no kept checkpoint of a best evaluation", subject="model.init.step",
                            location=where("model.init.step"), hint=listed)
    elif step not in steps:
        raise PlanError(f"{source} has no checkpoint of step {step}", subject="model.init.step",
                        location=where("model.init.step"), hint=listed)
    else:
        chosen = int(step)
    problem = rundir.verify_manifest(rundir.step_dir(source, chosen))
    if problem is not None:
        raise PlanError(f"checkpoint {chosen} of {source} is unreadable: {problem}", subject="model.init.from",
                        location=where("model.init.from"))
    config = old["model"]["config"]
    before = dict(config) if isinstance(config, dict) else {k: v for k, v in config}
    if "lora" in recipe.model.options:  # the recipe's adapters replace the run's (normalised as lora_*)
        before = {k: v for k, v in before.items() if not k.startswith("lora_")}
    options = {**before, **dict(recipe.model.options)}
    changed = [f"{k} {before[k]!r} → {v!r}" for k, v in recipe.model.options.items() if k in before and before[k] != v]
    params = {p["path"]: (p.get("dtype", "float32"), tuple(p["shape"])) for p in old["sharding"]["params"]}
    return options, {"kind": "run", "directory": source, "step": chosen, "tokenizer": old["data"].get("tokenizer"),
                     "params": params, "manifest": rundir.step_dir(source, chosen) / rundir.MANIFEST, "changed": changed}


def _run_init(src: dict[str, Any], table, where) -> InitPlan:
    """The InitPlan of a run's checkpoint whose parameters have exactly the model's names and shapes
    (adapters the run does not have start fresh: a LoRA fine-tune of a pretrained run)."""
    from capidsl.models.family import is_adapter

    have = {path: shape for path, (_, shape) in src["params"].items()}
    wanted = {p.path: tuple(p.shape) for p in table if p.path in have or not is_adapter(p.path)}
    problems = [f"missing parameter {p} {list(s)}" for p, s in wanted.items() if p not in have]
    problems += [f"unexpected parameter {p} {list(s)}" for p, s in have.items() if p not in wanted]
    problems += [f"parameter {p}: shape {list(have[p])} in the run, {list(s)} in the model"
                 for p, s in wanted.items() if p in have and have[p] != s]
    if problems:
        why = f" (the recipe changes {', '.join(src['changed'])})" if src["changed"] else ""
        raise PlanError(f"{src['directory']} does not fit the model{why}: " + "; ".join(problems[:8])
                        + (f"; and {len(problems) - 8} more" if len(problems) > 8 else ""),
                        subject="model.init.from", location=where("model.init.from"),
                        hint="a run's weights start a model of the same shape: leave its shape keys out of the recipe")
    from capidsl import rundir

    manifest = src["manifest"]
    digest = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else str(src["step"]).encode()).hexdigest()[:20]
    return InitPlan(kind="run", path=str(Path(src["directory"]).resolve()), architecture="capidsl",
                    files=(rundir.step_rel(src["step"]),), tensors=len(wanted),
                    bytes=sum(int(np.prod(s)) * ITEMSIZE.get(src["params"][p][0], 4) for p, s in wanted.items()),
                    dtypes=tuple(sorted({d for d, _ in src["params"].values()})), digest=digest,
                    tokenizer=src["tokenizer"], step=int(src["step"]))


def plan_init(hf: dict[str, Any] | None, cfg: dict[str, Any], table, where) -> InitPlan | None:
    """The InitPlan of a pretrained start, after checking its tensors against the model's (`table`)."""
    if hf is None:
        return None
    if hf.get("kind") == "run":
        return _run_init(hf, table, where)
    from capidsl.models.hf.layout import mismatches, tensors
    from capidsl.models.hf.safetensors import Checkpoint

    try:
        ckpt = Checkpoint(hf["directory"])
        found = {t.name: (t.dtype, t.shape) for t in ckpt.tensors.values()}
        layout = tensors(hf["architecture"], cfg, set(found))
        problems = mismatches(layout, found, cfg)
    except ModelError as err:
        raise PlanError(err.message, subject="model.init.from", location=where("model.init.from"), hint=err.hint) from None
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise PlanError(f"{hf['directory']} does not fit the model: {shown}", subject="model.init.from",
                        location=where("model.init.from"),
                        hint="the checkpoint and config.json disagree, or the directory holds another model")
    digest = hashlib.sha256()
    for f in ckpt.files:  # the headers name every tensor with its byte range: a changed checkpoint changes them
        digest.update(f.name.encode())
        digest.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            digest.update(fh.read(n))
    dtypes = sorted({found[t.name][0] for t in layout})
    return InitPlan(kind="hf", path=str(Path(hf["directory"]).resolve()), architecture=hf["architecture"],
                    files=tuple(f.name for f in ckpt.files), tensors=len(layout), bytes=int(ckpt.nbytes()),
                    dtypes=tuple(dtypes), digest=digest.hexdigest()[:20], tokenizer=hf["tokenizer"])
