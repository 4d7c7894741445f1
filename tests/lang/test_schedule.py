"""Schedules: parsing, the checks that need no run, resolution to steps, and optax values."""

import math

import pytest

from capidsl.lang import LangError, parse_schedule
from capidsl.lang.ast import (
    Constant, Cosine, Duration, Exponential, InverseSqrt, Linear, ResolvedPiece, ResolvedSchedule,
    Rest, Schedule, WarmupStableDecay, from_json,
)

SEED = "linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)"


def test_seed_schedule_parses_to_its_ast():
    s = parse_schedule(SEED)
    assert s == Schedule((Linear(0, 3e-4, Duration(500, "steps")), Cosine(3e-4, 3e-5, Rest())))
    assert str(s) == SEED
    assert parse_schedule(str(s)) == s
    assert from_json(s.to_json()) == s


@pytest.mark.parametrize("text, piece", [
    ("constant(1e-3, rest)", Constant(1e-3, Rest())),
    ("exponential(1e-3 -> 1e-5, 3 epochs)", Exponential(1e-3, 1e-5, Duration(3, "epochs"))),
    ("wsd(3e-4, warmup 500 steps, decay 2k steps)",
     WarmupStableDecay(0, 3e-4, 0, Duration(500, "steps"), Duration(2000, "steps"))),
    ("wsd(1e-5 -> 3e-4 -> 3e-5, warmup 1 epoch, decay 1M tokens)",
     WarmupStableDecay(1e-5, 3e-4, 3e-5, Duration(1, "epochs"), Duration(1_000_000, "tokens"))),
])
def test_single_pieces(text, piece):
    s = parse_schedule(text)
    assert s.pieces == (piece,)
    assert parse_schedule(str(s)) == s


def test_rsqrt_is_inverse_sqrt():
    a = parse_schedule("linear(0 -> 1e-3, 10 steps) then rsqrt(1e-3, rest)")
    b = parse_schedule("linear(0 -> 1e-3, 10 steps) then inverse_sqrt(1e-3, rest)")
    assert a == b and isinstance(a.pieces[1], InverseSqrt)


def test_constant_without_a_length_holds_for_the_rest():
    assert parse_schedule("constant(3e-3)") == parse_schedule("constant(3e-3, rest)")
    assert str(parse_schedule("linear(0 -> 1e-3, 10 steps) then constant(1e-3)")).endswith("constant(1e-3, rest)")


def test_jump_is_explicit():
    text = "cosine(1e-3 -> 0, 100 steps) then jump to cosine(1e-3 -> 0, rest)"
    s = parse_schedule(text)
    assert s.jumps == (True,)
    assert str(s) == text
    assert s != parse_schedule(text.replace("1e-3 -> 0, rest", "0 -> 0, rest").replace("jump to ", ""))


def _error(text, **resolve):
    with pytest.raises(LangError) as err:
        s = parse_schedule(text)
        if resolve:
            s.resolve(**resolve)
    return err.value


def test_discontinuity_is_an_error_at_the_next_start_value():
    e = _error("linear(0 -> 3e-4, 500 steps) then cosine(1e-4 -> 3e-5, rest)")
    assert e.column == SEED.index("3e-4 -> 3e-5") + 1
    assert "starts at 1e-4" in e.message and "ends at 3e-4" in e.message
    assert "then jump to" in e.hint


def test_same_value_written_differently_joins():
    parse_schedule("linear(0 -> 0.0003, 5 steps) then constant(3e-4, rest)")


@pytest.mark.parametrize("text, column, words", [
    ("linear(0 -> -1e-3, 5 steps)", 13, "negative"),
    ("constant(1e-3, rest) then linear(1e-3 -> 0, 100 steps)", 1, "last piece"),
    ("wsd(1e-3, warmup 5 steps, decay 5 steps) then constant(0, rest)", 1, "last piece"),
    ("linear(0 -> 1e-3, 1h) then constant(1e-3, rest)", 1, "wall-clock"),
    ("exponential(0 -> 1e-3, 5 steps)", 13, "cannot start or end at 0"),
    ("linear(0 -> 1e-3, 5 steps) then exponential(1e-3 -> 0, 5 steps)", 53, "cannot start or end at 0"),
    ("linear(0 -> 1e-3, 2.5 steps)", 19, "whole numbers"),
    ("linaer(0 -> 1e-3, 5 steps)", 1, "unexpected `linaer`"),
    ("linear(0 -> 1e-3 5 steps)", 18, "unexpected `5`"),
])
def test_static_errors_point_at_the_piece(text, column, words):
    e = _error(text)
    assert words in e.message
    assert e.column == column, e.render()
    assert e.render().splitlines()[2].index("^") - 2 == column - 1


def test_unknown_piece_suggests_the_nearest():
    e = _error("linaer(0 -> 1e-3, 5 steps)")
    assert e.hint == "did you mean linear?"
    assert "a schedule piece" in e.expected


# ---- resolution ---------------------------------------------------------------------------


def test_resolve_lays_pieces_on_steps():
    r = parse_schedule(SEED).resolve(2000)
    assert r == ResolvedSchedule(SEED, 2000, (
        ResolvedPiece("linear", 0, 500, 0.0, 3e-4),
        ResolvedPiece("cosine", 500, 1500, 3e-4, 3e-5),
    ))
    assert r.boundaries == (500,)
    assert from_json(r.to_json()) == r


def test_resolve_epochs_and_tokens_exactly():
    s = parse_schedule("linear(0 -> 1e-3, 0.5 epochs) then constant(1e-3, 1M tokens) then cosine(1e-3 -> 0, rest)")
    r = s.resolve(1000, steps_per_epoch=100, tokens_per_step=10_000)
    assert [(p.start_step, p.steps) for p in r.pieces] == [(0, 50), (50, 100), (150, 850)]


def test_resolve_refuses_to_round():
    e = _error("linear(0 -> 1e-3, 0.5 epochs) then constant(1e-3, rest)", total_steps=100, steps_per_epoch=33)
    assert "16.5 steps" in e.message and e.column == 19
    assert "16 steps or 17 steps" in e.hint


def test_warmup_longer_than_training():
    e = _error(SEED, total_steps=400)
    assert e.column == 1 and "end at step 500" in e.message and "400" in e.message


def test_rest_with_nothing_left():
    e = _error(SEED, total_steps=500)
    assert e.column == SEED.index("cosine") + 1 and "no steps are left" in e.message


def test_gap_at_the_end():
    e = _error("linear(0 -> 1e-3, 100 steps)", total_steps=200)
    assert "covers 100 of the 200" in e.message
    assert "constant(1e-3, rest)" in e.hint


def test_wsd_longer_than_training():
    e = _error("wsd(1e-3, warmup 60 steps, decay 50 steps)", total_steps=100)
    assert e.column == 1 and "60 warmup + 50 decay" in e.message


def test_wsd_resolves_to_three_pieces():
    r = parse_schedule("wsd(1e-3, warmup 10 steps, decay 20 steps)").resolve(100)
    assert r.pieces == (
        ResolvedPiece("linear", 0, 10, 0.0, 1e-3),
        ResolvedPiece("constant", 10, 70, 1e-3, 1e-3),
        ResolvedPiece("linear", 80, 20, 1e-3, 0.0),
    )


def test_inverse_sqrt_needs_a_warmup():
    e = _error("inverse_sqrt(1e-3, rest)")
    assert "needs a warmup" in e.message


def test_inverse_sqrt_join_checked_on_the_run():
    e = _error("linear(0 -> 1e-3, 100 steps) then inverse_sqrt(1e-3, 300 steps) then constant(1e-3, rest)",
               total_steps=1000)
    assert "5e-4" in e.message or "0.0005" in e.message
    parse_schedule("linear(0 -> 1e-3, 100 steps) then inverse_sqrt(1e-3, 300 steps) then constant(5e-4, rest)").resolve(1000)


def test_errors_without_source_point_into_the_canonical_text():
    s = from_json(parse_schedule(SEED).to_json())
    with pytest.raises(LangError) as err:
        s.resolve(500)
    assert err.value.text == SEED and err.value.column == SEED.index("cosine") + 1


# ---- optax ----------------------------------------------------------------------------------


def _values(text, total, steps, **kw):
    from capidsl.exec.schedule import to_optax

    f = to_optax(parse_schedule(text).resolve(total, **kw))
    return [float(f(s)) for s in steps]


def test_optax_seed_schedule_matches_a_hand_computation():
    got = _values(SEED, 2000, [0, 250, 499, 500, 1250, 1999, 2000, 5000])

    def hand(step):
        if step < 500:
            return 3e-4 * step / 500
        t = min(step - 500, 1500)
        return 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * t / 1500))

    for step, value in zip([0, 250, 499, 500, 1250, 1999, 2000, 5000], got):
        assert value == pytest.approx(hand(step), rel=1e-6, abs=1e-12), step


def test_optax_rising_cosine_from_zero():
    got = _values("cosine(0 -> 1, 100 steps) then constant(1, rest)", 200, [0, 50, 100, 150])
    assert got == pytest.approx([0.0, 0.5, 1.0, 1.0], abs=1e-6)


def test_optax_exponential_and_inverse_sqrt():
    got = _values("exponential(1 -> 0.01, 100 steps) then constant(0.01, rest)", 200, [0, 50, 100, 199])
    assert got == pytest.approx([1.0, 0.1, 0.01, 0.01], rel=1e-5)
    got = _values("linear(0 -> 1e-3, 100 steps) then inverse_sqrt(1e-3, rest)", 1000, [50, 100, 400, 999])
    assert got == pytest.approx([5e-4, 1e-3, 5e-4, 1e-3 * math.sqrt(100 / 999)], rel=1e-5)


def test_optax_wsd():
    got = _values("wsd(1e-5 -> 1e-3 -> 1e-4, warmup 10 steps, decay 20 steps)", 100, [0, 5, 10, 79, 80, 90, 100])
    assert got == pytest.approx([1e-5, 5.05e-4, 1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4], rel=1e-5)


def test_optax_jump():
    got = _values("linear(1 -> 0, 10 steps) then jump to linear(1 -> 0, rest)", 20, [9, 10, 15])
    assert got == pytest.approx([0.1, 1.0, 0.5], rel=1e-6)


def test_shares_of_the_run_resolve_exactly():
    s = parse_schedule("wsd(3e-4, warmup 5%, decay 20%)")
    assert str(s) == "wsd(3e-4, warmup 5%, decay 20%)"
    assert [p.steps for p in s.resolve(1000).pieces] == [50, 750, 200]
    e = _error("linear(0 -> 1, 10%) then constant(1, rest)", total_steps=205)
    assert "20.5 steps" in e.message and "20 steps or 21 steps" in e.hint and e.column == 16
    assert _error("linear(0 -> 1, 150%)").column == 16


def test_optax_increasing_exponential():
    got = _values("exponential(1e-5 -> 1e-3, 100 steps) then constant(1e-3, rest)", 200, [0, 50, 100, 150])
    assert got == pytest.approx([1e-5, 1e-4, 1e-3, 1e-3], rel=1e-5)


def test_optax_schedule_traces_under_jit():
    import jax
    import jax.numpy as jnp

    from capidsl.exec.schedule import to_optax

    text = "linear(0 -> 1e-3, 100 steps) then cosine(1e-3 -> 1e-4, 200 steps) then inverse_sqrt(1e-4, rest)"
    f = to_optax(parse_schedule(text).resolve(1000))
    jitted = jax.jit(f)
    for step in (0, 99, 100, 150, 300, 301, 999):
        assert float(jitted(jnp.int32(step))) == pytest.approx(float(f(step)), rel=1e-6)
