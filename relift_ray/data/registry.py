"""Named models and data sources, and how ``model.path`` / ``data.train`` are resolved.

The embedded toy and SmolLM2 plug in here the way a user's own would: by name, as a
``module:function`` the core imports only when a config names it.

    model.path: toy | smollm2-135m | <HF model folder> | <checkpoint or run folder> | owner/name
                | py:my_pkg.models:build      (a function returning an HF model folder)
    data.train: toy | toy-teacher | <file> | hf://owner/name[/glob]
                | py:my_pkg.data:questions    (a function of the split returning Questions)

Imports no Ray, and nothing of the toy task unless a config names it.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from relift_ray.data.lora import ADAPTER_CONFIG, base_of, is_adapter, merged_cache_key, merged_model
from relift_ray.errors import DataError

MODELS = {
    "toy": "relift_ray.data.toy.model:base_model_path",  # the embedded default's base model
    "smollm2-135m": "relift_ray.data.models:smollm2_path",  # SmolLM2-135M-Instruct, offline on CPU
}
DATA_SOURCES = {
    "toy": "relift_ray.data.toy.task:make_questions",  # the toy task's train / test splits
    # the same questions, demonstrations in a teacher's long self-verifying style (the
    # comparison job's teacher variants)
    "toy-teacher": "relift_ray.data.toy.task:make_teacher_questions",
}


class ModelNotFound(DataError):
    """``model.path`` names nothing loadable; the message says what was looked for."""


def cache_dir() -> Path:
    """Where built and converted models are kept: $RELIFT_CACHE, else ~/.cache/relift_ray."""
    return Path(os.environ.get("RELIFT_CACHE") or Path.home() / ".cache" / "relift_ray")


def load_function(target: str):
    """``package.module:function`` -> the function."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{target!r}: expected package.module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{target!r}: cannot import it ({e})") from None


def data_source(spec: str):
    """The question-making function of a named (or ``py:``) data source, else None."""
    if spec in DATA_SOURCES:
        return load_function(DATA_SOURCES[spec])
    if spec.startswith("py:"):
        return load_function(spec[3:])
    return None


def resolve_model(spec: str, field: str = "model.path", log=print) -> str:
    """A loadable model for ``spec``: a named model (built or converted on first use), an HF
    folder, a checkpoint (``<ckpt>/policy``), a run folder (its newest checkpoint's policy), or
    a hub id (``owner/name``, downloaded by ``from_pretrained`` into the HF cache). A LoRA
    adapter (a LoRA run's policy) resolves to its base model with the adapter merged in."""
    if spec in MODELS:
        return load_function(MODELS[spec])(log=log)
    if spec.startswith("py:"):
        try:
            return str(load_function(spec[3:])())
        except ValueError as e:
            raise ModelNotFound(f"{field}={spec}: {e}") from None
    path = Path(spec).expanduser()
    known = ", ".join(MODELS)
    if not path.exists():
        if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or not spec.strip("/"):
            raise ModelNotFound(
                f"{field}={spec}: no such folder ({path.resolve()} does not exist), and not a "
                f"hub id (owner/name). {field} takes an HF model folder (with config.json), a "
                f"checkpoint or run folder, a hub id, or one of: {known}")
        return spec  # a hub id: from_pretrained downloads it (or reads the HF cache)
    if (path / "config.json").exists():
        return str(path)
    if is_adapter(path):
        return _merged(path, field, log)
    for name in ("config.json", ADAPTER_CONFIG):
        if (path / "policy" / name).exists():
            return resolve_model(str(path / "policy"), field, log)
    checkpoints = {p.parent.parent for name in ("config.json", ADAPTER_CONFIG)
                   for p in path.rglob(f"policy/{name}")}
    if not checkpoints:
        raise ModelNotFound(
            f"{field}={spec}: {path.resolve()} exists but holds no model: looked for "
            f"config.json (an HF model folder), {ADAPTER_CONFIG} (a LoRA adapter), "
            f"policy/ (a checkpoint) and */policy/ (a run's checkpoints)")
    return resolve_model(str(max(checkpoints, key=_checkpoint_step) / "policy"), field, log)


def base_model_path(adapter_dir: str | Path, field: str = "model.path", log=print) -> str:
    """The base model of a LoRA adapter folder: the folder it was trained from when it still
    exists here, else its ``model.path`` resolved again (a named model, a hub id)."""
    base = base_of(adapter_dir)
    if Path(base["path"]).exists():
        return base["path"]
    try:
        return resolve_model(base["model.path"], field, log)
    except ModelNotFound as e:
        raise ModelNotFound(f"{field}={adapter_dir}: a LoRA adapter whose base model "
                            f"({base['model.path']}, trained from {base['path']}) is not "
                            f"here: {e}") from None


_MERGING: set[str] = set()  # adapters whose base is being resolved (a loop guard)


def _merged(adapter_dir: Path, field: str, log) -> str:
    """A LoRA adapter as one model: the checkpoint's merged/ copy (train.save_merged) when
    there is one, else base + adapter merged once into the relift cache."""
    beside = adapter_dir.parent / "merged"
    if adapter_dir.name == "policy" and (beside / "config.json").exists():
        return str(beside)
    key = str(adapter_dir.resolve())
    if key in _MERGING:
        raise ModelNotFound(f"{field}={adapter_dir}: the base model of this LoRA adapter "
                            f"resolves back to the adapter itself")
    _MERGING.add(key)
    try:
        base = base_model_path(adapter_dir, field, log)
    finally:
        _MERGING.discard(key)
    out = cache_dir() / "merged" / merged_cache_key(adapter_dir, base)
    if not (out / "config.json").exists():
        log(f"[models] merging the LoRA adapter {adapter_dir} into its base {base} -> {out}")
        merged_model(adapter_dir, base, out)
    return str(out)


def _checkpoint_step(ckpt: Path) -> tuple[int, float]:
    meta = ckpt / "meta.json"
    step = json.loads(meta.read_text()).get("step", -1) if meta.exists() else -1
    return step, ckpt.stat().st_mtime
