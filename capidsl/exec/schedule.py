"""Compile a ResolvedSchedule (the plan's learning-rate schedule) into an optax schedule.

Each piece becomes an optax schedule of the steps since the piece began, and
`optax.join_schedules` switches between them at the piece boundaries.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from capidsl.lang.ast import ResolvedPiece, ResolvedSchedule


def to_optax(resolved: ResolvedSchedule) -> optax.Schedule:
    """The learning rate as a function of the optimizer step (0-based), as the plan resolved it."""
    pieces = [piece_schedule(p) for p in resolved.pieces]
    if len(pieces) == 1:
        return pieces[0]
    return optax.join_schedules(pieces, list(resolved.boundaries))


def piece_schedule(piece: ResolvedPiece) -> optax.Schedule:
    """One piece as an optax schedule of t = step - piece.start_step; it holds its end value after."""
    a, b, n = piece.init_value, piece.end_value, piece.steps
    if piece.kind == "constant":
        return optax.constant_schedule(a)
    if piece.kind == "linear":
        return optax.linear_schedule(a, b, n)
    if piece.kind == "cosine":
        # end + (start - end) * (1 + cos(pi t / n)) / 2: optax's cosine decay of 1 -> 0 rescaled,
        # so that it also rises (warmup) and starts from 0, which cosine_decay_schedule cannot.
        unit = optax.cosine_decay_schedule(1.0, n, alpha=0.0)
        return lambda t: b + (a - b) * unit(t)
    if piece.kind == "exponential":
        return optax.exponential_decay(a, transition_steps=n, decay_rate=b / a, end_value=b)
    if piece.kind == "inverse_sqrt":
        # peak * sqrt(s / (s + t)) with s the step the piece starts at (fairseq's inverse_sqrt)
        s = float(piece.start_step)
        return lambda t: a * jnp.sqrt(s / (s + jnp.asarray(t, jnp.float32)))
    raise ValueError(f"unknown schedule piece kind {piece.kind!r}")
