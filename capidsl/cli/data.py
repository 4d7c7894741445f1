"""`capidsl data prepare RECIPE_OR_PLAN`: tokenise a recipe's sources into token stores, once.

`capidsl run` and `capidsl plan` prepare a missing store themselves; this command does it ahead
(on a CPU machine, before the accelerators are booked), shows where each store is and what it
holds, and checks an existing store's shards against the checksums in its manifest.
"""

from __future__ import annotations

import argparse

from capidsl.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    sub.required = True
    prep = sub.add_parser("prepare", help="tokenise the sources of a recipe (or plan.json) into token stores",
                          description="tokenise the sources of a recipe (or plan.json) into token stores")
    prep.add_argument("target", metavar="RECIPE_OR_PLAN", help="a recipe (.yaml) or a compiled plan (.json)")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a recipe key (repeatable)")
    prep.add_argument("--workers", type=int, metavar="N", help="worker processes (default: all cores)")
    prep.add_argument("--verify", action="store_true", help="check every shard of an existing store against its checksum")


def _sources(args):
    """(name, StoreSpec, cache, expected id) of each source to prepare."""
    from capidsl.data.store import spec_of

    if args.target.endswith(".json"):
        if args.overrides:
            raise UsageError("--set applies to recipes; a plan.json is prepared exactly as compiled")
        from capidsl.plan.plan import Plan

        try:
            data = Plan.loads(open(args.target).read()).data
        except OSError as err:
            raise UsageError(f"cannot read {args.target}: {err.strerror}") from err
        if data.mixture:
            return [(m.name, spec_of(data, source=m.source, path=m.path, field=m.field, hf_split=m.hf_split),
                     data.cache or None, m.store) for m in data.mixture]
        return [(data.source, spec_of(data), data.cache or None, data.store or None)]
    from capidsl.recipe import Recipe

    data = Recipe.from_yaml(args.target, overrides=args.overrides).data
    if data.mixture:
        return [(name, spec_of(data, **{k: v for k, v in m.items() if k != "weight"}), data.cache, None)
                for name, m in data.mixture.items()]
    return [(data.source, spec_of(data), data.cache, None)]


def run(args: argparse.Namespace) -> int:
    from capidsl.cli.progress import PrepareBar
    from capidsl.data.store import DOCUMENT_SOURCES, ensure_store
    from capidsl.data.store.verify import verify

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    for name, spec, cache, expect in _sources(args):
        if spec.source not in DOCUMENT_SOURCES:
            print(f"{name}: source {spec.source!r} needs no token store")
            continue
        store = ensure_store(spec, cache, workers=args.workers, progress=PrepareBar(), expect=expect)
        m = store.manifest
        train, val = m["splits"]["train"], m["splits"]["val"]
        print(f"{name}: store {store.id} at {store.root}")
        print(f"  train {train['tokens']:,} tokens in {train['documents']:,} documents, "
              f"validation {val['tokens']:,} tokens in {val['documents']:,} documents; {m['dtype']}, "
              f"vocabulary {m['vocab_size']:,}")
        if m["identity"]["format"] == "supervised":
            print(f"  loss on {train['loss_tokens']:,} of {train['tokens']:,} training tokens (completions)")
        if m["skipped"]["documents"]:
            print(f"  skipped {m['skipped']['documents']:,} bad documents (first: {m['skipped']['first']})")
        if args.verify:
            bad = verify(store)
            print("  checksums: " + ("all shards intact" if not bad else "DAMAGED: " + ", ".join(bad)))
            if bad:
                return 1
    return 0
