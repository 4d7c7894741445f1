"""The data step of planning: the DataPlan, its splits counted exactly, and the optimizer steps one epoch holds.

Counting uses `capidsl.data.describe` (pure Python, the loader's own arithmetic), so epochs and
tokens turn into exact step counts before anything runs. Bucketed batching replaces the packed
batch shape with the buckets' (capidsl/plan/buckets.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from capidsl.data.describe import describe
from capidsl.data.store import DOCUMENT_SOURCES, ensure_store, spec_of
from capidsl.plan.batching import Batching
from capidsl.plan.buckets import plan_buckets
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import BatchPlan, DataPlan, Lint
from capidsl.plan.shapes import ModelShapes


SUPERVISED_SOURCES = ("jsonl", "csv", "parquet", "hf")


@dataclass(frozen=True)
class DataLayout:
    """The data plan and what it implies for the batch and the length of an epoch."""

    data: DataPlan
    batch: BatchPlan  # the packed batch, or the widest bucket's
    steps_per_epoch: int
    val_batches: int  # validation batches in the whole split
    val_examples: int  # as `describe` counted them (for messages about a split too small)
    lints: tuple[Lint, ...]


def plan_data(config, seed: int, model: ModelShapes, batching: Batching, where, progress=None) -> DataLayout:
    """The recipe's `data:` section (`config`) for this model and batch, with every split counted.

    A document source is counted from its token store's manifest (prepared first when missing, shown
    by `progress`). A DataError from reading the source passes through; `compile_plan` places it at
    the recipe key."""
    cfg, batch, lm = model.cfg, batching.batch, model.lm
    data = DataPlan(source=config.source, path=config.path, field=config.field, tokenizer=config.tokenizer,
                    kind="lm" if lm else "classification", vocab_size=int(cfg.get("vocab_size", 0)),
                    seq_len=model.seq_len, input_dim=int(cfg.get("input_dim", 0)),
                    num_classes=int(cfg.get("num_classes", 0)), validation_fraction=float(config.validation_fraction),
                    shuffle=bool(config.shuffle), seed=int(seed), workers=int(config.workers),
                    prefetch=int(config.prefetch), synthetic_examples=int(config.synthetic_examples),
                    train_examples=0, val_examples=0, streams=batch.global_batch if batching.hidden is not None else 0,
                    hf_split=config.hf_split, format=config.format, prompt_field=config.prompt_field,
                    completion_field=config.completion_field, bad_documents=config.bad_documents,
                    cache=config.cache or "")
    if config.mixture:  # several sources by weight (capidsl/plan/mixture.py)
        from capidsl.plan.mixture import plan_mixture

        return plan_mixture(config, data, batching, where, progress)
    if config.format == "supervised" and config.source not in SUPERVISED_SOURCES:
        raise PlanError(f"supervised examples are records with {config.prompt_field!r} and {config.completion_field!r} "
                        f"fields; source {config.source!r} has none", subject="data.format",
                        location=where("data.format"), hint=f"use one of {', '.join(SUPERVISED_SOURCES)}")
    if lm and config.source in DOCUMENT_SOURCES:  # tokenised once into a store; the plan names it
        store = ensure_store(spec_of(data), config.cache, progress=progress)
        data = replace(data, store=store.id)
    info = describe(data)
    if lm and info.vocab_size > data.vocab_size:
        raise PlanError(f"the tokenizer has {info.vocab_size} tokens but model.vocab_size is {data.vocab_size}",
                        subject="model.vocab_size", location=where("model.vocab_size"),
                        hint=f"set model.vocab_size to at least {info.vocab_size}")
    data = replace(data, train_examples=info.train_examples, val_examples=info.val_examples,
                   loss_tokens=info.train_loss_tokens, skipped_documents=info.skipped_documents)
    steps_per_epoch = info.train_examples // batch.global_batch
    val_batches = info.val_examples // batch.global_batch
    lints: tuple[Lint, ...] = ()
    if config.batching == "bucketed":  # one document per row, by length bucket (capidsl/plan/buckets.py)
        bucketing = plan_buckets(config, data, batch, batching.blocks, where)
        data, batch, steps_per_epoch = bucketing.data, bucketing.batch, bucketing.steps_per_epoch
        val_batches, lints = bucketing.val_batches, bucketing.lints
    if steps_per_epoch == 0:
        raise PlanError(f"the training split holds {info.train_examples} examples, fewer than one batch of "
                        f"{batch.global_batch}", subject="data", location=where("data"),
                        hint="use more data or a smaller batch")
    return DataLayout(data=data, batch=batch, steps_per_epoch=steps_per_epoch, val_batches=val_batches,
                      val_examples=info.val_examples, lints=lints)
