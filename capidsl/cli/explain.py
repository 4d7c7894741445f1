"""`capidsl explain "<expression>"`: what a recipe-language expression means, in words.

For a schedule it also draws the curve over the run (`--steps N`), computed by the same optax
schedule the executor will use; jax and optax are imported only then.
"""

from __future__ import annotations

import argparse

_KINDS = {"duration": "duration", "cadence": "cadence", "schedule": "schedule", "stop": "stop_rule", "pruning": "pruning"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("expression", help='e.g. "linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)"')
    parser.add_argument("--kind", choices=sorted(_KINDS), help="what the expression is (default: guessed)")
    parser.add_argument("--steps", type=int, help="run length in optimizer steps, for the schedule plot")
    parser.add_argument("--steps-per-epoch", type=int, help="to turn epochs into steps")
    parser.add_argument("--tokens-per-step", type=int, help="to turn tokens into steps")
    parser.add_argument("--width", type=int, default=64, help="plot width in characters")
    parser.add_argument("--height", type=int, default=12, help="plot height in lines")
    parser.add_argument("--no-plot", action="store_true", help="words only")


def run(args: argparse.Namespace) -> int:
    from capidsl.lang.explain import explain
    from capidsl.lang.schedules import Schedule

    result = explain(args.expression, _KINDS.get(args.kind) if args.kind else None)
    print(result.text)
    if isinstance(result.node, Schedule) and not args.no_plot:
        print()
        print(schedule_plot(result.node, args.steps, args.steps_per_epoch, args.tokens_per_step,
                            width=args.width, height=args.height))
    return 0


def default_run_length(schedule, steps_per_epoch=None, tokens_per_step=None) -> tuple[int, bool]:
    """The written lengths' total, doubled when the schedule ends with `rest` (so that the
    open-ended part shows); True when that was a guess."""
    from capidsl.lang.ast import Duration, WarmupStableDecay

    fixed = 0
    for piece in schedule.pieces:
        parts = (piece.warmup, piece.decay) if isinstance(piece, WarmupStableDecay) else (piece.length,)
        for d in parts:
            if isinstance(d, Duration):
                fixed += d._to_steps(steps_per_epoch, tokens_per_step, schedule.source)
    open_ended = isinstance(schedule.pieces[-1], WarmupStableDecay) or not isinstance(schedule.pieces[-1].length, Duration)
    return (max(2 * fixed, 100), True) if open_ended else (fixed, False)


def schedule_plot(schedule, steps=None, steps_per_epoch=None, tokens_per_step=None, width=64, height=12) -> str:
    """The learning rate over the run as a block-character area plot, with piece boundaries marked."""
    import numpy as np

    from capidsl.exec.schedule import to_optax
    from capidsl.lang.numbers import format_number

    guessed = False
    if steps is None:
        steps, guessed = default_run_length(schedule, steps_per_epoch, tokens_per_step)
    resolved = schedule.resolve(steps, steps_per_epoch, tokens_per_step)
    lr = to_optax(resolved)
    width = max(8, min(width, steps))
    at = np.linspace(0, steps - 1, width).round().astype(int)
    values = np.array([float(lr(int(s))) for s in at])
    top = float(values.max()) or 1.0
    levels = values / top * height  # in eighths of a line below
    blocks = " ▁▂▃▄▅▆▇█"
    top_label = format_number(float(f"{top:.3g}"))
    label_w = len(top_label)
    rows = []
    for row in range(height, 0, -1):
        cells = []
        for lv in levels:
            fill = lv - (row - 1)
            cells.append("█" if fill >= 1 else blocks[int(round(max(fill, 0) * 8))])
        label = top_label if row == height else ("0" if row == 1 else "")
        rows.append(f"{label:>{label_w}} ┤{''.join(cells)}")
    marks = [" "] * width
    for b in resolved.boundaries:
        marks[int(np.abs(at - b).argmin())] = "^"
    rows.append(" " * label_w + " └" + "─" * width)
    rows.append(" " * label_w + "  " + "".join(marks).rstrip())
    left, right = "0", f"{steps} steps" + (" (assumed; pass --steps)" if guessed else "")
    rows.append(" " * label_w + "  " + left + " " * max(1, width - len(left) - len(f"{steps}")) + right)
    if resolved.boundaries:
        rows.append(" " * label_w + "  ^ piece boundaries at steps " + ", ".join(map(str, resolved.boundaries)))
    return "\n".join(rows)
