"""May this plan continue that checkpoint? The fingerprint says yes or no; the diff says why.

Fields in `plan.RESUME_SAFE` (length, stop rule, cadences, outputs, ...) may change between runs;
any other difference would make the restored state mean something else, so resume refuses it,
naming each changed field with both values.
"""

from __future__ import annotations

from typing import Any

from capidsl.exec.errors import RunError
from capidsl.plan.diff import json_diff
from capidsl.plan.plan import RESUME_SAFE, Plan

# Fields derived from others: shown after the change that caused them.
_DERIVED = ("sharding.", "model.param_count", "batch.tokens_per_step")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(plan: Plan, meta: dict[str, Any]) -> list[str]:
    """Raise RunError if `plan` cannot continue the checkpoint described by `meta`; else return the
    safe changes (dotted paths with old → new), for the run to report."""
    old = meta.get("plan") or {}
    new = plan.to_json()
    if meta.get("fingerprint") != plan.fingerprint:
        unsafe = [d for d in json_diff({k: v for k, v in old.items() if k not in RESUME_SAFE},
                                       {k: v for k, v in new.items() if k not in RESUME_SAFE}) if d[0] != "data.cache"]
        unsafe.sort(key=lambda d: (d[0] != "data.store", d[0].startswith(_DERIVED)))
        shown = "; ".join(f"{p}: {_short(a)} → {_short(b)}" for p, a, b in unsafe[:8])
        if unsafe and unsafe[0][0] == "data.store" and unsafe[0][1]:  # the data changed: say which files
            from capidsl.data.store.prepare import store_change

            shown = f"{store_change(plan.data, unsafe[0][1]) or 'the token store changed'} ({shown})"
        more = f" (and {len(unsafe) - 8} more)" if len(unsafe) > 8 else ""
        raise RunError(
            f"the checkpoint at step {meta.get('step')} was made by a different plan: "
            f"{shown or 'fingerprint ' + str(meta.get('fingerprint')) + ' → ' + plan.fingerprint}{more}",
            subject="resume",
            hint="these fields change what the saved state means; undo the change, or use another --run-dir "
            "for a fresh run (safe to change on resume: " + ", ".join(RESUME_SAFE) + ")",
        )
    safe = json_diff({k: old.get(k) for k in RESUME_SAFE if k in old}, {k: new.get(k) for k in RESUME_SAFE if k in old})
    ignore = ("memory", "flops", "comms", "lints", "topology", "run_dir")
    return [f"{p}: {_short(a)} → {_short(b)}" for p, a, b in safe if p.split(".")[0].split("[")[0] not in ignore]
