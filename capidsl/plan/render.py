"""Human output of `capidsl plan`: a summary line, the mesh, parameters grouped by pattern, memory, warnings."""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from capidsl.plan.kernels import FUSED_FAMILIES
from capidsl.plan.kernels import describe as describe_kernel
from capidsl.plan.mesh import describe as describe_mesh
from capidsl.plan.plan import Plan


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _pattern(path: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", path)


def param_rows(plan: Plan):
    """Parameters grouped by path pattern (numbered layers fold into one row) with counts, bytes and
    whether they train (a frozen layer never shares a row with a trained one)."""
    frozen = set(plan.optimizer.frozen)
    groups: OrderedDict[tuple, list] = OrderedDict()
    for p in plan.sharding.params:
        key = (_pattern(p.path), p.shape, p.spec, p.logical_axes, p.path in frozen)
        groups.setdefault(key, []).append(p)
    for (pattern, shape, spec, axes, is_frozen), ps in groups.items():
        yield (pattern, len(ps), shape, axes, spec, sum(math.prod(p.shape) for p in ps),
               sum(p.bytes_per_device for p in ps), is_frozen)


def trainable_text(plan: Plan) -> str:
    """Fine-tuning: how many parameters (and bytes, whole, not per device) train and how many are frozen."""
    frozen = set(plan.optimizer.frozen)
    counts = {True: 0, False: 0}
    sizes = {True: 0, False: 0}
    for p in plan.sharding.params:
        n = math.prod(p.shape)
        counts[p.path in frozen] += n
        sizes[p.path in frozen] += n * np.dtype(p.dtype).itemsize
    text = (f"parameters {human_count(counts[False])} trainable ({human_bytes(sizes[False])}), "
            f"{human_count(counts[True])} frozen ({human_bytes(sizes[True])}; {len(frozen)} of "
            f"{len(plan.sharding.params)} tensors: no gradient, no optimizer state)")
    return text + "\n" + saved_text(plan, frozen)


def saved_text(plan: Plan, frozen: set[str]) -> str:
    """The adapters (model.lora) if any, and the device memory that freezing saves against training
    every parameter: the frozen parameters' optimizer moments and float32 gradients."""
    from capidsl.models.family import is_adapter
    from capidsl.plan.memory import gradient_bytes, optimizer_state_bytes

    o, sh, mesh = plan.optimizer, plan.sharding, plan.mesh
    saved = (optimizer_state_bytes(o.name, o.momentum, sh, mesh) - optimizer_state_bytes(o.name, o.momentum, sh, mesh, frozenset(frozen))
             + gradient_bytes(sh) - gradient_bytes(sh, frozenset(frozen)))
    options = plan.model.options
    lead = ""
    if "lora_rank" in options:
        n = sum(math.prod(p.shape) for p in sh.params if is_adapter(p.path))
        lead = (f"adapters rank {options['lora_rank']} (scale {options['lora_alpha'] / options['lora_rank']:g}) on "
                f"{', '.join(options['lora_targets'])}: {human_count(n)} parameters; ")
    return f"{lead}freezing saves {human_bytes(saved)}/device of optimizer state and gradients against training every parameter"


def init_text(plan: Plan) -> str:
    """Where the starting weights come from, and what was checked."""
    i = plan.model.init
    if i.kind == "run":
        return (f"weights from run {i.path} at step {i.step}: {i.tensors} parameters checked by name and shape, "
                f"fresh optimizer")
    return (f"weights from {i.path} ({i.architecture}, {len(i.files)} safetensors file{'s' if len(i.files) > 1 else ''}, "
            f"{human_bytes(i.bytes)} {'/'.join(i.dtypes)} → {plan.precision.param_dtype}): {i.tensors} tensors checked "
            f"by name, shape and dtype" + (f"; tokenizer {i.tokenizer}" if i.tokenizer else ""))


def pruning_text(plan: Plan) -> str:
    """The sparsity schedule: events, the target at a few of them, and the zeros reached at the end."""
    pr = plan.pruning
    s = pr.schedule
    events = s.events()
    shown = events if len(events) <= 6 else [events[round(i * (len(events) - 1) / 5)] for i in range(6)]
    curve = " → ".join(f"{float(s.sparsity_at(e)):.1%} @{e}" for e in shown)
    return (f"pruning {s.text}\n  {len(events)} mask updates, steps {events[0]}–{events[-1]}: {curve}\n"
            f"  {pr.scope} over {len(pr.params)} parameters ({pr.groups} groups, {human_count(pr.weights)} weights): "
            f"{pr.final_zeros:,} zeros ({pr.final_zeros / pr.weights:.2%}) from step {s.end_step}")


def comms_text(plan: Plan) -> str:
    """Bytes each device sends per step, by collective (the terms that are not zero), and which axes use the network."""
    c = plan.comms
    terms = [(c.fsdp_all_gather, "FSDP all-gather"), (c.fsdp_reduce_scatter, "FSDP reduce-scatter"),
             (c.data_all_reduce, "data all-reduce")]
    parts = [f"{name} {human_bytes(n)}" for n, name in terms if n]
    if c.tensor_all_reduce:
        rest = c.tensor_all_reduce - c.tensor_per_layer * c.layers
        parts.append(f"tensor all-reduce {human_bytes(c.tensor_per_layer)}/layer × {c.layers}"
                     + (f" + {human_bytes(rest)}" if rest else "") + f" = {human_bytes(c.tensor_all_reduce)}")
    where = f"; across hosts: {', '.join(c.across_hosts)}" if c.across_hosts else ""
    return ("communication/device/step (estimate): " + ("; ".join(parts) if parts else "none") + where
            + f"\n  {c.formula}")


def hidden_state_text(plan: Plan) -> str:
    """The carried recurrent state: its shape and placement, its bytes, and the streams that feed it."""
    h, c = plan.hidden_state, plan.cadence
    placed = ", ".join((a or "·") + ("→" + "+".join(m) if m else "") for a, m in zip(h.logical_axes, h.spec))
    return (f"hidden state carried across batches: {'×'.join(map(str, h.shape))} {h.dtype} ({placed}), "
            f"{human_bytes(h.bytes_per_device)}/device, in the train state and every checkpoint\n"
            f"  {plan.data.streams} contiguous streams, one per batch row, {c.steps_per_epoch:,} segments of "
            f"{plan.batch.seq_len} tokens each per epoch; gradients stop at segment borders")


def buckets_text(plan: Plan) -> str:
    """Length-bucketed batching: the batch shapes XLA will compile, their share of the data, the padding."""
    from capidsl.plan.buckets import padding

    bs = plan.data.buckets
    shapes = ", ".join(f"{b.rows}×{b.length} ({b.train_examples:,} ex, {b.batches_per_epoch} batches)" for b in bs)
    bucketed, naive = padding(bs)
    return (f"batching bucketed by length, {plan.batch.tokens_per_step:,} positions per batch: {len(bs)} shapes "
            f"(one compiled step each): {shapes}\n  padding ≈ {bucketed:.1%} of positions (padding every row to "
            f"{bs[-1].length} would be {naive:.1%})")


def supervised_text(plan: Plan) -> str:
    """Supervised examples: how many of the training split's targets count in the loss."""
    d = plan.data
    targets = sum(b.real_tokens for b in d.buckets) if d.buckets else d.train_examples * d.seq_len
    return (f"supervised examples ({d.prompt_field} → {d.completion_field}): loss on {d.loss_tokens:,} of "
            f"~{targets:,} training target tokens ({d.loss_tokens / max(1, targets):.1%}: completions and their "
            f"separators; prompts are context only); token durations count all {plan.batch.tokens_per_step:,} "
            f"positions of a step")


def data_text(plan: Plan) -> str:
    """Where the examples come from: the source, its token store and what the split holds."""
    d = plan.data
    where = "the Python standard library" if d.source == "stdlib" else f"{d.source} {d.path or ''}".strip()
    text = f"data {where}" + (f", tokenizer {d.tokenizer}" if d.kind == "lm" and d.source != "synthetic" else "")
    if d.store:
        text += f"   token store {d.store}"
    unit = "windows" if d.kind == "lm" and not d.buckets else "examples"
    text += f"   {d.train_examples:,} training / {d.val_examples:,} validation {unit}"
    if d.skipped_documents:
        text += f"   {d.skipped_documents:,} bad documents left out (bad_documents: skip)"
    return text


def render(plan: Plan) -> Group:
    t = plan.topology
    c = plan.cadence
    head = Text.assemble(
        (f"{plan.name}", "bold"), f"  {human_count(plan.model.param_count)} params ({plan.model.family})",
        f"  {plan.batch.tokens_per_step:,} tokens/step", f"  {c.total_steps:,} steps",
        f" ({c.total_steps / c.steps_per_epoch:.3g} epochs)", ("  fingerprint ", "dim"), (plan.fingerprint, "cyan"))
    topo = Text(f"{t.device_count} × {t.device_kind} ({human_bytes(t.memory_per_device)} each, {t.process_count} "
                f"process{'es' if t.process_count > 1 else ''}{', simulated' if t.simulated else ''})   mesh {describe_mesh(plan.mesh)}"
                + (f"   XLA flags {' '.join(plan.xla_flags)}" if plan.xla_flags else ""))
    b = plan.batch
    batching = Text(f"batch {b.global_batch} = micro {b.micro_batch} × accumulation {b.accumulation} × data-parallel "
                    f"{b.data_parallel}   precision {plan.precision.param_dtype}/{plan.precision.compute_dtype}/"
                    f"{plan.precision.output_dtype}   optimizer {plan.optimizer.name}   remat {plan.model.remat}"
                    + (f"   attention {describe_kernel(plan.model.attention)}   layers {plan.model.layer_loop}"
                       if plan.model.family in FUSED_FAMILIES else ""))
    evals = f"eval every {c.eval_every} steps ({c.eval_batches} batches)" if c.eval_every else "no evaluation"
    ckpts = f"checkpoint every {c.checkpoint_every} steps" if c.checkpoint_every else "checkpoint at the end"
    cad = Text(f"schedule {plan.schedule.text}\nstop {plan.stop.rule or 'at the end'}   {evals}   "
               f"{ckpts}, keep {plan.checkpoint.keep}   log every {c.log_every}")

    table = Table(title="parameters (per device after sharding; logical axis→mesh axes)", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("parameter", no_wrap=True)
    table.add_column("×", justify="right")
    table.add_column("shape", no_wrap=True)
    table.add_column("axes")
    table.add_column("params", justify="right")
    table.add_column("bytes/device", justify="right", no_wrap=True)
    if plan.optimizer.frozen:
        table.add_column("trains")
    for pattern, n, shape, axes, spec, count, nbytes, is_frozen in param_rows(plan):
        placed = ", ".join((a or "·") + ("→" + "+".join(m) if m else "") for a, m in zip(axes, spec))
        cells = [pattern, str(n), "×".join(map(str, shape)), placed, human_count(count), human_bytes(nbytes)]
        table.add_row(*cells, *((("frozen" if is_frozen else "yes"),) if plan.optimizer.frozen else ()),
                      style="dim" if is_frozen else None)

    m = plan.memory
    width = 40
    fill = min(width, round(width * m.total / max(1, m.device_memory)))
    verdict = ("FITS", "green") if m.fits else ("DOES NOT FIT", "bold red")
    bar = Text.assemble("memory/device [", ("█" * fill, verdict[1]), " " * (width - fill), "] ",
                        f"{human_bytes(m.total)} of {human_bytes(m.device_memory)}  ", verdict,
                        f"  headroom {human_bytes(m.headroom)}")
    parts = Text(f"  params {human_bytes(m.params)}  optimizer {human_bytes(m.opt_state)}  batch {human_bytes(m.batch)}"
                 + (f"  state {human_bytes(m.state)}" if m.state else "")
                 + f"  temp {human_bytes(m.temp)} (" + ", ".join(f"{k} {human_bytes(v)}" for k, v in m.breakdown) + ")"
                 + f"\n  {m.activation_formula}")
    f = plan.flops
    cost = Text(f"FLOPs {f.flops_per_token:.3g}/token, {f.flops_per_step:.3g}/step; ~{f.step_time_s:.3g} s/step at "
                f"{f.assumed_mfu:.0%} MFU ({f.formula})")
    items = [head, topo, batching, cad, Text(data_text(plan)), table, bar, parts, cost]
    if plan.optimizer.frozen:
        items.insert(1, Text(trainable_text(plan)))
    if plan.model.init is not None:
        items.insert(1, Text(init_text(plan)))
    if plan.pruning is not None:
        items.insert(4, Text(pruning_text(plan)))
    if plan.hidden_state is not None:
        items.insert(4, Text(hidden_state_text(plan)))
    if plan.data.buckets:
        items.insert(4, Text(buckets_text(plan)))
    if plan.data.mixture:
        from capidsl.plan.mixture import mixture_text

        items.insert(4, Text(mixture_text(plan)))
    if plan.data.format == "supervised":
        items.insert(4, Text(supervised_text(plan)))
    if plan.comms is not None:
        items.append(Text(comms_text(plan)))
    if m.compiled:
        compiled = dict(m.compiled)
        items.append(Text("compiled (XLA, per device): " + "  ".join(f"{k} {human_bytes(v)}" for k, v in m.compiled)))
        if compiled.get("temp_bytes"):
            items.append(Text(f"  temp analytic / XLA temp = {m.temp / compiled['temp_bytes']:.2f} "
                              "(FITS is judged on the analytic total; docs/plan.md says how close it is)"))
    for lint in plan.lints:
        items.append(Text(f"{lint.level}: {lint.location + ': ' if lint.location else ''}{lint.message} [{lint.code}]",
                          style="yellow" if lint.level == "warning" else "red"))
    return Group(*items)
