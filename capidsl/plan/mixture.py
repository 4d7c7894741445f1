"""Planning a mixture (`data.mixture`): one token store per source, the stages' start steps, the repeat lints.

`plan_mixture` (from plan_data) prepares and counts every source; one epoch of a mixture is the sum of
its sources' training windows divided by the global batch, so `3 epochs` means as many rows as the
sources hold together, three times. `resolve_stages` (from compile, once the run's length is known)
turns each stage's `at` (`90%`, `5000 steps`, `2 epochs`, `2B tokens`) into its first step, exactly or
with an error naming the nearest whole step counts, and warns about a source read more than
`data.max_repeats` epochs by the end of the run. The rows each batch takes from each source are
capidsl/data/mixture.py's arithmetic, shared with the loader.
"""

from __future__ import annotations

from dataclasses import replace

from capidsl.data.errors import DataError
from capidsl.data.mixture import allocation
from capidsl.data.store import ensure_store, spec_of
from capidsl.lang import LangError
from capidsl.plan.cadences import lang_error
from capidsl.plan.data import SUPERVISED_SOURCES, DataLayout
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import DataPlan, Lint, MixSourcePlan, MixStagePlan


def plan_mixture(config, data: DataPlan, batching, where, progress=None) -> DataLayout:
    """The DataLayout of a mixture: `data` (the DataPlan of the shared fields) with every source counted.

    The stages after the first keep start step -1 until `resolve_stages` knows the run's length."""
    batch = batching.batch
    if data.kind != "lm":
        raise PlanError("a mixture mixes token windows: it needs a language model", subject="data.mixture",
                        location=where("data.mixture"))
    if config.batching == "bucketed":
        raise PlanError("mixtures are packed windows only; bucketed batching reads one source's documents",
                        subject="data.batching", location=where("data.batching"), hint="use data.batching: packed")
    if batching.hidden is not None:
        raise PlanError("mixtures are packed windows only; hidden_state: carry reads each row as one contiguous "
                        "stream", subject="data.mixture", location=where("data.mixture"),
                        hint="use hidden_state: reset with a mixture")
    if config.path is not None:
        raise PlanError("with a mixture, each source names its own path", subject="data.path",
                        location=where("data.path"), hint="move it under data.mixture.<name>.path, or drop it")
    names = list(config.mixture)
    for name in names:  # before any store is prepared
        source = config.mixture[name]["source"]
        if config.format == "supervised" and source not in SUPERVISED_SOURCES:
            key = f"data.mixture.{name}.source"
            raise PlanError(f"supervised examples are records with {config.prompt_field!r} and "
                            f"{config.completion_field!r} fields; source {source!r} has none", subject=key,
                            location=where(key), hint=f"use one of {', '.join(SUPERVISED_SOURCES)}")
    counted = [_source(config, data, name, where, progress) for name in names]
    sources = tuple(plan for plan, _, _ in counted)
    stages = (MixStagePlan(0, _shares([config.mixture[n]["weight"] for n in names]), "start"),)
    for i, stage in enumerate(config.mixture_stages or ()):
        stages += (MixStagePlan(-1, _shares(_weights(stage["weights"], names, i, where)), str(stage["at"])),)
    for k, s in enumerate(sources):
        if s.train_examples == 0 and any(st.weights[k] > 0 for st in stages):
            raise PlanError(f"source {s.name!r} holds {s.train_tokens} training tokens, not one window of "
                            f"{data.seq_len + 1}", subject=f"data.mixture.{s.name}",
                            location=where(f"data.mixture.{s.name}"), hint="give it more data or weight 0")
    train, val = sum(s.train_examples for s in sources), sum(s.val_examples for s in sources)
    data = replace(data, source="mixture", path=None, mixture=sources, mixture_stages=stages, train_examples=train,
                   val_examples=val, loss_tokens=sum(loss for _, loss, _ in counted),
                   skipped_documents=sum(skipped for _, _, skipped in counted))
    steps_per_epoch = train // batch.global_batch
    if steps_per_epoch == 0:
        raise PlanError(f"the mixture's training splits hold {train} windows, fewer than one batch of "
                        f"{batch.global_batch}", subject="data.mixture", location=where("data.mixture"),
                        hint="use more data or a smaller batch")
    return DataLayout(data=data, batch=batch, steps_per_epoch=steps_per_epoch,
                      val_batches=sum(s.val_examples // batch.global_batch for s in sources), val_examples=val,
                      lints=())


def _source(config, data: DataPlan, name: str, where, progress) -> tuple[MixSourcePlan, int, int]:
    """One source's store (prepared when missing) and its counts: its plan, loss tokens, skipped documents."""
    m = config.mixture[name]
    key = f"data.mixture.{name}"
    fields = dict(source=m["source"], path=m.get("path"), field=m.get("field", config.field),
                  hf_split=m.get("hf_split", config.hf_split))
    try:
        store = ensure_store(spec_of(data, **fields), config.cache, progress=progress)
    except DataError as err:
        sub = f"{key}.path" if err.subject == "data.path" else key
        raise PlanError(f"{name}: {err.args[0]}", subject=sub, location=where(sub), hint=err.hint) from None
    if store.vocab_size > data.vocab_size:
        raise PlanError(f"the tokenizer has {store.vocab_size} tokens but model.vocab_size is {data.vocab_size}",
                        subject="model.vocab_size", location=where("model.vocab_size"),
                        hint=f"set model.vocab_size to at least {store.vocab_size}")
    train, val = store.counts("train"), store.counts("val")
    window = data.seq_len + 1
    plan = MixSourcePlan(name=name, store=store.id, train_examples=train["tokens"] // window,
                         val_examples=val["tokens"] // window, train_tokens=train["tokens"], val_tokens=val["tokens"],
                         **fields)
    return plan, train["loss_tokens"], store.manifest["skipped"]["documents"]


def _weights(weights, names: list[str], i: int, where) -> list[float]:
    """A stage's weights in source order: every source named once, nothing else."""
    key = f"data.mixture_stages[{i}].weights"
    unknown = [n for n in weights if n not in names]
    missing = [n for n in names if n not in weights]
    if unknown or missing:
        what = f"unknown source {unknown[0]!r}" if unknown else f"no weight for source {missing[0]!r}"
        raise PlanError(f"{what}: a stage gives every source of data.mixture a weight", subject=key,
                        location=where(key), hint=f"the sources are {', '.join(names)}")
    if not any(float(weights[n]) > 0 for n in names):
        raise PlanError("a stage needs a positive weight", subject=key, location=where(key))
    return [weights[n] for n in names]


def _shares(weights) -> tuple[float, ...]:
    """Weights normalised to sum 1 (the loader makes them exact fractions; capidsl/data/mixture.py)."""
    total = sum(float(w) for w in weights)
    return tuple(float(w) / total for w in weights)


def resolve_stages(layout, config, total: int, tokens_per_step: int, where):
    """The layout with each stage's start step, and a lint per source read more than `max_repeats` epochs."""
    from capidsl.lang.parse import parse_point

    data = layout.data
    if not data.mixture:
        return layout
    stages, previous = [data.mixture_stages[0]], 0
    for i, stage in enumerate(data.mixture_stages[1:]):
        key = f"data.mixture_stages[{i}].at"
        try:
            start = parse_point(stage.at).to_steps(layout.steps_per_epoch, tokens_per_step, total)
        except LangError as err:
            raise lang_error(err, key, where) from None
        if start >= total:
            raise PlanError(f"the stage at {stage.at} starts at step {start}, but the run is {total} steps",
                            subject=key, location=where(key), hint=f"start it before step {total}")
        if start <= previous:
            raise PlanError(f"the stage at {stage.at} (step {start}) does not come after the one before it "
                            f"(step {previous})", subject=key, location=where(key),
                            hint="list data.mixture_stages in the order they start")
        stages.append(replace(stage, start_step=start))
        previous = start
    data = replace(data, mixture_stages=tuple(stages))
    lints = []
    epochs = allocation(data, layout.batch.global_batch).epochs([s.train_examples for s in data.mixture], total)
    for s, e in zip(data.mixture, epochs):
        if e > float(config.max_repeats):
            loc = where(f"data.mixture.{s.name}")
            lints.append(Lint("warning", "mixture-repeats", f"source {s.name!r} is read {e:.2f} epochs by the end of "
                              f"the run, more than data.max_repeats ({config.max_repeats:g})", str(loc) if loc else None))
    return replace(layout, data=data, lints=layout.lints + tuple(lints))


def mixture_text(plan) -> str:
    """`capidsl plan`'s lines about a mixture: each source's tokens, its share per stage, its epochs by the end."""
    from capidsl.plan.render import human_count

    data, c = plan.data, plan.cadence
    stages = data.mixture_stages
    epochs = allocation(data, plan.batch.global_batch).epochs([s.train_examples for s in data.mixture], c.total_steps)
    heads = ", ".join(f"{'start' if st.start_step == 0 else st.at} (step {st.start_step:,})" for st in stages)
    lines = [f"mixture of {len(data.mixture)} sources, 1 epoch = {c.steps_per_epoch:,} steps; shares from {heads}"]
    width = max(len(s.name) for s in data.mixture)
    for k, s in enumerate(data.mixture):
        shares = " → ".join(f"{st.weights[k]:.1%}" for st in stages)
        lines.append(f"  {s.name:<{width}}  {s.source} {s.path or ''}  {human_count(s.train_tokens)} train tokens "
                     f"({s.train_examples:,} windows)  share {shares}  {epochs[k]:.2f} epochs by the end")
    return "\n".join(lines)
