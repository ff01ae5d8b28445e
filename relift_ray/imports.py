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

DeepSpeed's ZeRO imports its Muon optimizer when it checks the optimizer it is given and again
in every gradient reduction (to ask whether the optimizer is a Muon one). That module decorates
its kernels with ``torch.compile`` as it is imported, which loads TorchInductor: about 1.1 s of
CPU in each learner before step 1, then again at the first backward pass, for an optimizer
relift_ray never uses. ``import_deepspeed()`` imports that module with the decoration deferred
to the kernels' first call, so it costs nothing unless a Muon kernel runs.
"""
from __future__ import annotations

import functools
import importlib
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
        # DeepSpeed: what this function is for
        import deepspeed
    finally:
        if hide and "mlflow" in sys.modules and sys.modules["mlflow"] is None:
            del sys.modules["mlflow"]
    _import_muon_lazily()
    return deepspeed


MUON = "deepspeed.runtime.zero.muon.muon_optimizer"


def _compile_on_first_call():
    """A stand-in for ``torch.compile`` as a decorator: compiles the function when it is
    first called rather than when it is decorated (what loads TorchInductor)."""
    def decorate(fn):
        compiled = None

        @functools.wraps(fn)
        def run(*args, **kwargs):
            nonlocal compiled
            if compiled is None:
                # torch: at the first call, as torch.compile would
                import torch
                compiled = torch.compile(fn)
            return compiled(*args, **kwargs)
        return run
    return decorate


def _import_muon_lazily() -> None:
    """Imports DeepSpeed's Muon optimizer modules with their ``torch.compile`` decorations
    deferred to a first call (one that relift_ray never makes)."""
    if MUON in sys.modules:
        return
    # DeepSpeed: only once it is imported (import_deepspeed)
    from deepspeed.runtime import compiler
    eager = compiler.compile
    compiler.compile = _compile_on_first_call
    try:
        importlib.import_module(MUON)
    except ImportError:  # a DeepSpeed without Muon
        pass
    finally:
        compiler.compile = eager
