"""`capidsl report RUN_DIR [--out report.png]`: plot a run's curves to a PNG and print its summary."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    p.add_argument("--out", metavar="PNG", help="where to write the picture (default: RUN_DIR/report.png)")


def run(args) -> int:
    from pathlib import Path

    from capidsl.report import describe, plot, read_run

    record = read_run(args.run_dir)
    out = plot(record, args.out or Path(args.run_dir) / "report.png")
    print(describe(record))
    print(f"wrote {out}")
    return 0
