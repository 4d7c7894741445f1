"""Streams (a carried recurrent state): every row continues its stream, epochs move the borders, resume is exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from capidsl.data import describe, eval_batches, train_loader
from capidsl.data.sources import lm_streams, source_key
from capidsl.plan.plan import DataPlan

B, T = 4, 16


def data_plan(**kw) -> DataPlan:
    base = dict(source="synthetic", path=None, field="text", tokenizer="byte", kind="lm", vocab_size=256, seq_len=T,
                input_dim=0, num_classes=0, validation_fraction=0.1, shuffle=True, seed=3, workers=0, prefetch=2,
                synthetic_examples=100, train_examples=0, val_examples=0, streams=B)
    return DataPlan(**(base | kw))


def take(it, n):
    return [next(it) for _ in range(n)]


def test_each_row_continues_its_stream_and_an_epoch_is_every_segment():
    d = data_plan()
    tokens = lm_streams(source_key(d))[0]
    length = len(tokens) // B
    windows = (length - 1) // T
    assert describe(d).train_examples == B * windows
    batches = take(train_loader(d, global_batch=B), windows + 1)
    for prev, nxt in zip(batches[:windows - 1], batches[1:windows]):
        np.testing.assert_array_equal(nxt["inputs"][:, 0], prev["targets"][:, -1])  # the next segment starts where this ended
        np.testing.assert_array_equal(nxt["inputs"][:, 1:], nxt["targets"][:, :-1])
        assert not nxt["reset"].any()
    assert batches[0]["reset"].all() and batches[windows]["reset"].all()  # a new epoch starts new streams
    rows = [np.concatenate([b["inputs"][r] for b in batches[:windows]] + [batches[windows - 1]["targets"][r, -1:]])
            for r in range(B)]
    text = np.concatenate([tokens, tokens]).astype(np.int32)  # the rotation wraps around the end
    # each row read one contiguous stretch of the (rotated) stream, T·windows + 1 tokens long
    starts = [next(i for i in range(len(tokens)) if np.array_equal(text[i:i + len(row)], row)) for row in rows]
    # ... and the rows' stretches are the B consecutive streams of L tokens from one rotation point
    assert any(sorted((s - o) % len(tokens) for s in starts) == [0, length, 2 * length, 3 * length] for o in starts)


def test_epochs_move_the_segment_borders_and_shuffle_off_keeps_them():
    d = data_plan()
    windows = describe(d).train_examples // B
    it = train_loader(d, global_batch=B)
    first = take(it, windows)
    second = take(it, windows)
    assert not np.array_equal(first[0]["inputs"], second[0]["inputs"])
    still = take(train_loader(replace(d, shuffle=False), global_batch=B), windows + 1)
    np.testing.assert_array_equal(still[0]["inputs"], still[windows]["inputs"])
    tokens = lm_streams(source_key(d))[0]
    np.testing.assert_array_equal(still[0]["inputs"][1], tokens[len(tokens) // B:len(tokens) // B + T])


def test_resume_and_processes_are_exact():
    d = data_plan()
    it = train_loader(d, global_batch=B)
    take(it, 7)
    state = it.get_state()
    expected = take(it, 5)
    again = train_loader(d, global_batch=B)
    again.set_state(state)
    for a, b in zip(expected, take(again, 5)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    halves = [take(train_loader(d, global_batch=B, process_index=p, process_count=2), 3) for p in range(2)]
    whole = take(train_loader(d, global_batch=B), 3)
    for i in range(3):
        np.testing.assert_array_equal(np.concatenate([halves[0][i]["inputs"], halves[1][i]["inputs"]]), whole[i]["inputs"])


def test_validation_streams_run_in_order_from_a_reset():
    d = data_plan(synthetic_examples=400)
    batches = eval_batches(d, global_batch=B, max_batches=3)
    assert len(batches) == 3 and batches[0]["reset"].all() and not batches[1]["reset"].any()
    np.testing.assert_array_equal(batches[1]["inputs"][:, 0], batches[0]["targets"][:, -1])
    assert eval_batches(data_plan(synthetic_examples=3), global_batch=B) == []  # too short: none (the plan lints it)
