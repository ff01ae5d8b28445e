"""Start-up cost of a relift_ray process.

transformers imports scikit-learn whenever it is installed (MLflow installs it), only for the
confidence-threshold tuning of assisted (speculative) generation, which relift_ray never uses;
that import costs about 0.8 s of CPU in every process that loads a tokenizer or a model (the
driver, the scheduler, each generator and each learner: ~4 s of a 2-core machine's start-up).
``skip_unused_modules()``, called first thing in those processes, makes transformers see it as
absent. It leaves a process that has already imported scikit-learn alone, and it touches no
process that is not one of relift_ray's own (a notebook that imports the package is unchanged
until it calls ``driver.run``).

DeepSpeed imports MLflow (about 0.9 s of CPU) whenever it is installed, for its autotuner,
which relift_ray never runs; ``import_deepspeed()`` imports DeepSpeed with MLflow hidden, so a
learner worker pays for MLflow only where it logs (rank 0, in the background, after start-up).
"""
from __future__ import annotations

import sys
from types import ModuleType

UNUSED = ("sklearn",)


def skip_unused_modules() -> None:
    for name in UNUSED:
        # importlib.util.find_spec(name) returns None for a None entry: "not installed"
        sys.modules.setdefault(name, None)


def import_deepspeed() -> ModuleType:
    """``import deepspeed`` without DeepSpeed importing MLflow (a process that has MLflow
    already is left as it is, and MLflow stays importable afterwards)."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # ``import mlflow`` raises ImportError: "not installed"
    try:
        import deepspeed
    finally:
        if hide and "mlflow" in sys.modules and sys.modules["mlflow"] is None:
            del sys.modules["mlflow"]
    return deepspeed
