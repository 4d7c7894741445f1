"""May this plan continue that checkpoint? The fingerprint says yes or no; the diff says why.

Fields in `plan.RESUME_SAFE` (length, stop rule, cadences, outputs, ...) may change between runs,
and so may the layout (`plan.LAYOUT`: the mesh, the shardings, micro-batch and accumulation) as
long as the global batch stays: orbax restores the state into the new shardings and the data
position carries over, because it counts global batches. Any other difference would make the
restored state mean something else, so resume refuses it, naming each changed field with both values.
"""

from __future__ import annotations

from typing import Any

from capidsl.exec.errors import RunError
from capidsl.plan.diff import json_diff
from capidsl.plan.plan import RESUME_SAFE, Plan, meaning

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
    unsafe = [] if meta.get("fingerprint") == plan.fingerprint else json_diff(meaning(old), meaning(new))
    if unsafe or (not old and meta.get("fingerprint") != plan.fingerprint):  # no plan recorded: the fingerprint decides
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
            "for a fresh run (safe to change on resume: " + ", ".join(RESUME_SAFE)
            + ", and the layout: mesh, shardings, micro-batch, accumulation and layer loop with the same global batch)",
        )
    safe = json_diff({k: old.get(k) for k in RESUME_SAFE if k in old}, {k: new.get(k) for k in RESUME_SAFE if k in old})
    ignore = ("memory", "flops", "comms", "lints", "topology", "run_dir")
    notes = [f"{p}: {_short(a)} → {_short(b)}" for p, a, b in safe if p.split(".")[0].split("[")[0] not in ignore]
    return _layout(old, new) + notes


def _mesh(plan_json: dict[str, Any]) -> str:
    return " × ".join(f"{a}={n}" for a, n in zip(plan_json["mesh"]["axes"], plan_json["mesh"]["shape"]))


def _layout(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The layout's changes in a line or two: the devices, the mesh, micro-batch × accumulation, the layer loop."""
    if not old or "mesh" not in old:
        return []
    out = []
    if old["mesh"] != new["mesh"]:
        before = old.get("topology", {}).get("device_count")
        after = new.get("topology", {}).get("device_count")
        devices = f"{before} → {after} devices, " if before != after and before and after else ""
        out.append(f"layout: {devices}mesh {_mesh(old)} → {_mesh(new)} (the state is restored into the new shardings)")
    b0, b1 = old.get("batch", {}), new.get("batch", {})
    if (b0.get("micro_batch"), b0.get("accumulation")) != (b1.get("micro_batch"), b1.get("accumulation")):
        out.append(f"batch {b1.get('global_batch')} as micro {b0.get('micro_batch')} × accumulation "
                   f"{b0.get('accumulation')} → micro {b1.get('micro_batch')} × accumulation {b1.get('accumulation')}")
    loops = [plan.get("model", {}).get("layer_loop", "scanned") for plan in (old, new)]
    if loops[0] != loops[1]:  # the same numbers either way (plan/kernels.py choose_layer_loop)
        out.append(f"layers {loops[0]} → {loops[1]}")
    return out
