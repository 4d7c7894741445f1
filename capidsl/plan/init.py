"""The init step of planning: where a model's starting weights come from, checked before anything compiles.

`model.init.from` names a local Hugging Face model directory (config.json + *.safetensors). Its
config.json supplies the gpt options (a recipe that writes a different shape is an error naming
both values; seq_len may be shorter than the model's context), its tokenizer.json the tokenizer
(unless the recipe names one), and every tensor's name, shape and dtype is checked against the
model from the safetensors headers alone, all mismatches listed at once. The InitPlan it makes
carries a digest of those headers, so the fingerprint changes when the weights do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from capidsl.models.errors import ModelError
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import InitPlan


def init_options(recipe, where) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the model's options: the recipe's over the checkpoint's, the Hugging Face model's facts or None)."""
    options = dict(recipe.model.options)
    init = recipe.model.init
    if init is None:
        return options, None
    from capidsl.models.hf.config import SHAPE_KEYS, read_config

    source = Path(init["from"]).expanduser()
    if (source / "plan.json").is_file() and not (source / "config.json").is_file():
        raise PlanError("starting from a capidsl run directory is not available yet", subject="model.init.from",
                        location=where("model.init.from"),
                        hint="start from a Hugging Face model directory (config.json + *.safetensors)")
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


def plan_init(hf: dict[str, Any] | None, cfg: dict[str, Any], precision_dtype: str, where) -> InitPlan | None:
    """The InitPlan of a Hugging Face start, after checking its tensors against the model's options."""
    if hf is None:
        return None
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
