"""Mixtures in the data layer: exact row allocation per stage, the rows each batch holds, processes, resume, eval.

The sources are the committed corpus of recipes/mixture.yaml (examples/data/mixture/: prose.jsonl and code/),
tokenised once per session into $CAPIDSL_CACHE.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from capidsl.data import describe, eval_batches, train_loader
from capidsl.data.errors import DataError
from capidsl.data.mixture import Allocation, MixtureTable, allocation, cumulative, source_stores
from capidsl.data.store import ensure_store, spec_of
from capidsl.plan.plan import DataPlan, MixSourcePlan, MixStagePlan

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "mixture"
SOURCES = (("prose", "jsonl", str(CORPUS / "prose.jsonl")), ("code", "text", str(CORPUS / "code")))


def mixture_plan(stages=((0, (3, 1)),), *, seq_len=256, sources=SOURCES, **kw) -> DataPlan:
    """A mixture DataPlan as the planner makes one: a store per source, counted; `stages` (start, weights)."""
    base = dict(source="mixture", path=None, field="text", tokenizer="byte", kind="lm", vocab_size=256,
                seq_len=seq_len, input_dim=0, num_classes=0, validation_fraction=0.1, shuffle=True, seed=3, workers=0,
                prefetch=2, synthetic_examples=0, train_examples=0, val_examples=0)
    data = DataPlan(**(base | kw))
    mix = []
    for name, source, path in sources:
        fields = dict(source=source, path=path, field="text", hf_split="train")
        store = ensure_store(spec_of(data, **fields))
        train, val = store.counts("train")["tokens"], store.counts("val")["tokens"]
        mix.append(MixSourcePlan(name=name, store=store.id, train_examples=train // (seq_len + 1),
                                 val_examples=val // (seq_len + 1), train_tokens=train, val_tokens=val, **fields))
    stages = tuple(MixStagePlan(s, tuple(w / sum(ws) for w in ws), "start" if s == 0 else f"{s} steps") for s, ws in stages)
    return DataPlan(**(base | kw | dict(mixture=tuple(mix), mixture_stages=stages,
                                        train_examples=sum(m.train_examples for m in mix),
                                        val_examples=sum(m.val_examples for m in mix))))


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# ---- the arithmetic ---------------------------------------------------------------------------------------


def test_cumulative_weights_are_exact_fractions_ending_at_one():
    assert cumulative([3, 1]) == (0, Fraction(3, 4), 1)
    assert cumulative([0.7, 0.2, 0.1])[-1] == 1 and cumulative([1, 0, 1]) == (0, Fraction(1, 2), Fraction(1, 2), 1)
    w = cumulative([1 / 3, 1 / 3, 1 / 3])
    assert w == (0, Fraction(1, 3), Fraction(2, 3), 1)  # floats' binary noise is gone (limit_denominator)
    assert all(x.denominator <= 10**6 for x in cumulative([0.123456789, 0.3, 0.576543211]))


@pytest.mark.parametrize("stages,batch", [
    ([(0, (3, 1))], 8),
    ([(0, (0.7, 0.2, 0.1)), (13, (0.1, 0.1, 0.8)), (40, (1, 0, 0))], 10),
    ([(0, (1, 1, 1)), (7, (5, 0, 2))], 7),
    ([(0, (0.999, 0.001)), (50, (0.001, 0.999))], 64),
])
def test_every_batch_holds_b_rows_and_each_source_its_exact_cumulative_share(stages, batch):
    alloc = Allocation(stages, batch)
    starts = [s for s, _ in stages] + [120]
    for k in range(alloc.sources):
        assert alloc.rows_before(k, 0) == 0
    for b in range(120):
        counts = alloc.counts(b)
        assert sum(counts) == batch and min(counts) >= 0
    for s, (start, weights) in enumerate(stages):
        w = cumulative(weights)
        before = [alloc.rows_before(k, start) for k in range(alloc.sources)]
        for j in range(starts[s + 1] - start + 1):  # the floor formula, batch by batch through the stage
            for k in range(alloc.sources):
                expect = (j * batch * w[k + 1]).__floor__() - (j * batch * w[k]).__floor__()
                got = alloc.rows_before(k, start + j) - before[k]
                assert got == expect
                assert abs(got - j * batch * float(w[k + 1] - w[k])) < 1 + 1e-9  # the share, to within one row
    assert sum(alloc.rows_before(k, 120) for k in range(alloc.sources)) == 120 * batch


def test_rows_before_adds_the_stages_in_closed_form():
    alloc = Allocation([(0, (1, 1)), (5, (1, 3))], 8)
    assert [alloc.rows_before(0, b) for b in (0, 5, 6, 9)] == [0, 20, 22, 28]
    assert [alloc.rows_before(1, b) for b in (0, 5, 6, 9)] == [0, 20, 26, 44]
    assert alloc.epochs([10, 11], 9) == [2.8, 4.0]


def test_stages_must_start_at_zero_and_go_forward():
    with pytest.raises(DataError, match="start at step 0"):
        Allocation([(3, (1, 1))], 8)
    with pytest.raises(DataError, match="go forward"):
        Allocation([(0, (1, 1)), (5, (1, 0)), (5, (0, 1))], 8)


# ---- the loader ---------------------------------------------------------------------------------------------


def test_each_batch_holds_the_windows_its_order_names_and_each_source_runs_through_its_epochs():
    data = mixture_plan([(0, (3, 1)), (40, (1, 1))])
    table = MixtureTable(data, 8)
    stores = source_stores(data)
    n = [m.train_examples for m in data.mixture]
    assert all(x > 100 for x in n)
    seen = [[], []]
    for b in range(100):  # prose wraps into its second epoch (6 rows a batch for 40 batches, then 4 a batch)
        order = table.order(b)
        batch = table(b)
        assert batch["inputs"].shape == (8, 256) and batch["mask"].shape == (8, 256)
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        assert batch["mask"].sum() == 8 * 256
        assert list(np.bincount(order[:, 0], minlength=2)) == allocation(data, 8).counts(b)
        for (k, w), row in zip(order, np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)):
            want = np.asarray(stores[k].split("train")[w * 257:(w + 1) * 257], np.int32)
            np.testing.assert_array_equal(row, want)
        for k in (0, 1):
            seen[k].extend(order[order[:, 0] == k, 1].tolist())
    rows = [allocation(data, 8).rows_before(k, 100) for k in (0, 1)]
    assert rows[0] > n[0] > rows[1] and [len(x) for x in seen] == rows
    times = np.bincount(seen[0], minlength=n[0])  # prose: every window once, and the second epoch begun
    assert set(times) == {1, 2} and (times == 2).sum() == rows[0] - n[0]
    assert max(np.bincount(seen[1])) == 1  # code: still in its first epoch, no window twice


def test_the_same_plan_gives_the_same_batches_and_another_seed_others():
    data = mixture_plan()
    same(take(train_loader(data, global_batch=8), 6), take(train_loader(data, global_batch=8), 6))
    other = take(train_loader(mixture_plan(seed=4), global_batch=8), 1)[0]
    assert not np.array_equal(other["inputs"], next(train_loader(data, global_batch=8))["inputs"])


def test_rows_are_mixed_within_a_batch_unless_shuffle_is_off():
    order = MixtureTable(mixture_plan(), 16).order(0)
    assert list(order[:, 0]) != sorted(order[:, 0])  # micro-batches see both sources
    ordered = MixtureTable(mixture_plan(shuffle=False), 16)
    assert [list(ordered.order(b)[:, 1]) for b in (0, 1)] == [list(range(12)) + list(range(4)),
                                                             list(range(12, 24)) + list(range(4, 8))]


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_take_disjoint_slices_that_make_up_the_batch(processes):
    data = mixture_plan([(0, (3, 1)), (3, (1, 1))])
    whole = take(train_loader(data, global_batch=8), 6)
    parts = [take(train_loader(data, global_batch=8, process_index=p, process_count=processes), 6)
             for p in range(processes)]
    joined = [{k: np.concatenate([parts[p][b][k] for p in range(processes)]) for k in whole[b]} for b in range(6)]
    same(whole, joined)
    assert all(part[0]["inputs"].shape[0] == 8 // processes for part in parts)
    with pytest.raises(DataError, match="does not split"):
        train_loader(data, global_batch=8, process_count=3)


@pytest.mark.parametrize("k", [3, 4, 5])  # before, at and after the stage boundary (step 4)
def test_resume_from_the_state_equals_straight_iteration_across_a_stage(k):
    data = mixture_plan([(0, (3, 1)), (4, (1, 3))])
    straight = take(train_loader(data, global_batch=8), 8)
    it = train_loader(data, global_batch=8)
    take(it, k)
    resumed = train_loader(data, global_batch=8)
    resumed.set_state(it.get_state())
    same(straight[k:], take(resumed, 8 - k))


def test_eval_batches_are_every_sources_full_batches_round_robin():
    data = mixture_plan(seq_len=64)
    per = [m.val_examples // 8 for m in data.mixture]
    assert min(per) >= 2
    batches = eval_batches(data, global_batch=8)
    assert len(batches) == sum(per)
    val = [np.asarray(s.split("val")[:], np.int32) for s in source_stores(data)]
    for i, k in enumerate((0, 1, 0, 1)):  # source 0's batch 0, source 1's batch 0, then the batches 1
        first = val[k][(i // 2) * 8 * 65:(i // 2 + 1) * 8 * 65].reshape(8, 65)
        np.testing.assert_array_equal(batches[i]["inputs"], first[:, :-1])
    same(eval_batches(data, global_batch=8, max_batches=3), batches[:3])
    halves = [eval_batches(data, global_batch=8, process_index=p, process_count=2, max_batches=3) for p in (0, 1)]
    same([{k: np.concatenate([halves[0][i][k], halves[1][i][k]]) for k in batches[i]} for i in range(3)], batches[:3])


def test_describe_sums_the_sources():
    data = mixture_plan()
    info = describe(data)
    assert info.train_examples == data.train_examples and info.val_examples == data.val_examples
    assert info.train_tokens == sum(m.train_tokens for m in data.mixture) and info.vocab_size == 256


def test_supervised_sources_mask_the_targets_like_the_store(tmp_path):
    for name in ("a", "b"):
        with open(tmp_path / f"{name}.jsonl", "w") as fh:
            for i in range(120):
                fh.write(json.dumps({"prompt": f"{name} question {i}? ", "completion": f"answer {i * 7} " * 3}) + "\n")
    sources = tuple((n, "jsonl", str(tmp_path / f"{n}.jsonl")) for n in ("a", "b"))
    data = mixture_plan(sources=sources, seq_len=32, format="supervised")
    table = MixtureTable(data, 8)
    masks = [s.split("train", "mask") for s in source_stores(data)]
    batch, order = table(2), table.order(2)
    assert 0 < batch["mask"].sum() < batch["mask"].size
    for (k, w), row in zip(order, batch["mask"]):
        np.testing.assert_array_equal(row, np.asarray(masks[k][w * 33 + 1:(w + 1) * 33], np.float32))


def test_a_weighted_source_without_a_window_is_refused():
    data = mixture_plan(seq_len=200_000)
    with pytest.raises(DataError, match="no training window"):
        MixtureTable(data, 8)


def test_the_table_travels_to_worker_processes_by_pickle():
    """`data.workers` sends the table pickled to spawned processes: the copy makes the same batches."""
    import pickle

    table = MixtureTable(mixture_plan([(0, (3, 1)), (2, (1, 1))]), 8)
    table(0)  # the original has opened its maps; the copy reopens them
    copy = pickle.loads(pickle.dumps(table))
    same([table(b) for b in range(4)], [copy(b) for b in range(4)])
