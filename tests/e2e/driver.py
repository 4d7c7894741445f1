"""`capidsl run` in a subprocess, with the fake data of tests/exec when asked (for kill tests).

    python tests/e2e/driver.py PLAN_JSON RUN_DIR [--steps N] [--fake-data] [--nan-at K]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("plan")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int)
    p.add_argument("--fake-data", action="store_true")
    p.add_argument("--nan-at", type=int)
    args = p.parse_args()
    if args.fake_data:
        sys.path.insert(0, str(HERE.parent / "exec"))
        import fake_data

        from capidsl.plan.plan import Plan

        fake_data.module.plan = Plan.loads(Path(args.plan).read_text())
        sys.modules["capidsl.data"] = fake_data.module(nan_at=args.nan_at)
    from capidsl.cli.main import main as cli

    argv = ["run", args.plan, "--run-dir", args.run_dir] + (["--steps", str(args.steps)] if args.steps else [])
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
