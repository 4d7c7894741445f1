"""The plan stage: a validated Recipe compiles into a frozen, fingerprinted Plan (see plan.py).

`compile_plan` is imported lazily, so that `capidsl.plan.plan` (the dataclasses the executor
reads) does not pull in the compiler's imports.
"""


def __getattr__(name):
    if name == "compile_plan":
        from capidsl.plan.compile import compile_plan

        return compile_plan
    if name == "PlanError":
        from capidsl.plan.errors import PlanError

        return PlanError
    if name == "Plan":
        from capidsl.plan.plan import Plan

        return Plan
    raise AttributeError(f"module 'capidsl.plan' has no attribute {name!r}")


__all__ = ["compile_plan", "Plan", "PlanError"]
