"""The seed's entry point, kept: `from capidsl.train import main; main()` trains recipes/base.yaml.

`main(config)` takes None (the packaged recipes/base.yaml), a path to a recipe or plan.json, or a
`Recipe`, and returns the run's `Summary`.
"""

from __future__ import annotations

import os
from typing import Any


def main(config: Any = None, *, run_dir: str | None = None, max_steps: int | None = None):
    """Compile and run a recipe the way `capidsl run` does (printing its closing lines); returns the Summary.

    Started by a cluster launcher (SLURM, Open MPI, ...), each process first joins the others, as `capidsl run` does."""
    from capidsl.exec import distributed

    distributed.initialize(distributed.resolve())  # before anything asks JAX for devices
    from capidsl.plan.compile import compile_plan
    from capidsl.runner import describe, load_plan, run

    if config is None:
        from capidsl.resources import resource_path

        config = resource_path("recipes", "base.yaml")
    if isinstance(config, (str, os.PathLike)):
        plan = load_plan(os.fspath(config))
    elif hasattr(config, "fingerprint") and hasattr(config, "cadence"):  # already a Plan
        plan = config
    else:
        plan = compile_plan(config)
    summary = run(plan, run_dir, max_steps=max_steps)
    if distributed.is_primary():
        print(describe(summary))
    return summary


if __name__ == "__main__":
    main()
