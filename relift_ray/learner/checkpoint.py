"""Checkpoints: the learner's exact training state (DeepSpeed's own format), the HF-format
policy beside it, the scheduler's state, and the best validation's policy.

A checkpoint folder of step s (``save_checkpoint``; Ray Train merges the ranks' folders):

    meta.json                 {"step": s} (rank 0)
    complete-r{r}.json        rank r's files and their sizes, written last (``complete_marker``)
    scheduler_state.json      the scheduler's whole state (rank 0)
    policy/                   the policy in HF format with its tokenizer (evaluation, serving)
    deepspeed/                the exact learner state, below

A LoRA run's (model.lora) ``policy/`` is its adapter folder (PEFT's format, naming the base
model: relift_ray.data.lora) with the tokenizer, plus ``merged/``, the base with the adapter
merged in, when train.save_merged is set; its ``deepspeed/`` holds the adapters and their two
optimizer states alone (the frozen base is rebuilt from model.path, which the learner's json
records and a resume checks).

The HF copy of the policy (``policy/``) is in the model's dtype: in bf16 it has lost the fp32
master weights, so a run resumed from it differs from the run that was never stopped. This
module saves what an exact resume needs, beside that copy, under ``<checkpoint>/deepspeed/``:

    deepspeed/latest                                       "state" (rank 0)
    deepspeed/zero_to_fp32.py, zero_to_torch.py            DeepSpeed's recovery scripts (rank 0)
    deepspeed/state/mp_rank_00_model_states.pt             module weights, engine counters (rank 0)
    deepspeed/state/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt
                                                           rank r's fp32 master partition and the
                                                           optimizer state of the current phase
    deepspeed/phases_rank{r}.pt                            rank r's state of the other phase(s)
    deepspeed/learner_rank{r}.json                         world size, phase, ZeRO stage, dtype

(``bf16_`` only in bf16 runs; under ZeRO-3 the module weights are per rank too,
``zero_pp_rank_{r}_mp_rank_00_model_states.pt``; ZeRO-0 has no per-rank DeepSpeed file: the
optimizer, replicated, is in rank 0's model-states file.) Every name is rank 0's alone or
carries the rank, so the ranks' folders merge into one, as Ray Train does.

Why the extra phases file: ``TwoPhaseAdamW`` keeps two AdamW states (RL and SFT) and swaps them
in ``set_phase``. DeepSpeed's ZeRO optimizer holds it as its base optimizer (its params are
DeepSpeed's flat fp32 partitions) and saves ``base_optimizer.state_dict()``: the state of the
phase active at the save, nothing else. The other phase is saved here, keyed the same way (by
position in the param groups, i.e. by flat partition), and put back after DeepSpeed's load.

Usage (every rank, collectively):

    save_learner(learner, directory, rank, world)   # after a step, beside the HF copy
    learner = Learner(cfg, base_model_path, world, rank)
    load_learner(learner, directory, rank, world)   # before any step
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from relift_ray.data.lora import base_fingerprint, lora_settings, write_adapter
from relift_ray.rollout.calls import call_within

TAG = "state"  # DeepSpeed's tag: the folder <checkpoint>/deepspeed/state
DS_DIR = "deepspeed"


class CheckpointWorldMismatch(ValueError):
    """The checkpoint's DeepSpeed state is partitioned for another number of learners."""


def _meta_name(rank: int) -> str:
    return f"learner_rank{rank}.json"


def _phases_name(rank: int) -> str:
    return f"phases_rank{rank}.pt"


@contextmanager
def _master_params_in_groups(learner):
    """ZeRO-3 empties its base optimizer's param groups between steps (it puts each fp32
    partition in only for its step); torch's (load_)state_dict packs the state by position in
    the groups, so put them all in meanwhile, as ZeRO-3's own state_dict does. ZeRO-1/2 and
    stage 0 keep them there."""
    zero_opt = learner.engine.optimizer
    empty = not any(g["params"] for g in learner.opt.param_groups)
    if empty and hasattr(zero_opt, "_set_fp32_optimizer_param_groups"):
        zero_opt._set_fp32_optimizer_param_groups()
        try:
            yield
        finally:
            zero_opt._clear_fp32_optimizer_param_groups()
    else:
        yield


def _phase_state_dict(opt, phase: str) -> dict:
    """torch's state_dict of one phase of a TwoPhaseAdamW (the active phase is left as it was)."""
    current = opt.phase
    opt.set_phase(phase)
    try:
        return torch.optim.AdamW.state_dict(opt)
    finally:
        opt.set_phase(current)


def save_learner(learner, directory: Path, rank: int, world: int) -> None:
    """Write this rank's exact training state under ``directory/deepspeed``. Collective: every
    rank calls it (DeepSpeed synchronises the ranks inside), each with its own or a shared
    ``directory``."""
    ds_dir = Path(directory) / DS_DIR
    ds_dir.mkdir(parents=True, exist_ok=True)
    opt = learner.opt
    current = opt.phase
    # DeepSpeed: module weights, fp32 master partitions, the active phase's optimizer state
    # (a LoRA run: the adapters alone; the frozen base is the model.path it was built from)
    learner.engine.save_checkpoint(str(ds_dir), tag=TAG,
                                   client_state={"relift_phase": current, "relift_world": world},
                                   exclude_frozen_parameters=learner.lora)
    # the phases DeepSpeed does not see: their state is kept aside in opt.phase_state
    with _master_params_in_groups(learner):
        others = {ph: _phase_state_dict(opt, ph) for ph in opt.phase_state if ph != current}
    torch.save({"phase": current, "states": others}, ds_dir / _phases_name(rank))
    cfg = learner.cfg
    (ds_dir / _meta_name(rank)).write_text(json.dumps({
        "world": world, "rank": rank, "phase": current, "tag": TAG,
        "zero_stage": cfg.train.zero_stage, "dtype": cfg.model.dtype,
        "lora": _lora_of(cfg, learner.model_path)}))


def saved_world(directory: Path) -> int:
    """The number of learners that wrote the checkpoint in ``directory``."""
    meta = Path(directory) / DS_DIR / _meta_name(0)
    if not meta.exists():
        raise FileNotFoundError(f"{Path(directory)} holds no learner state ({meta} is missing): "
                                "not a checkpoint written by "
                                "relift_ray.learner.checkpoint.save_learner")
    return int(json.loads(meta.read_text())["world"])


def check_world(directory: Path, world: int) -> None:
    """Raise ``CheckpointWorldMismatch``, saying how to resume, unless ``world`` learners
    wrote the checkpoint in ``directory``."""
    directory = Path(directory)
    ds_dir = directory / DS_DIR
    saved = saved_world(directory)
    if saved != world:
        raise CheckpointWorldMismatch(
            f"checkpoint {directory} was written by {saved} learner(s) but this run has {world}: "
            f"its fp32 master weights and optimizer state are partitioned for {saved} ranks. "
            f"Resume with cluster.num_learners={saved}. (DeepSpeed's universal checkpoint tool, "
            f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {ds_dir / TAG} "
            f"--output_folder <dir> --inject_missing_state, converts its DeepSpeed part to any "
            f"number of ranks, but the learner does not load universal checkpoints yet and the "
            f"inactive optimizer phase, {DS_DIR}/phases_rank*.pt, is not converted.)")


def load_learner(learner, directory: Path, rank: int, world: int) -> None:
    """Put this rank's exact training state back from ``directory`` (written by
    ``save_learner``). Call it on every rank, on a freshly built ``Learner`` (after
    ``deepspeed.initialize``, before any step): the weights it was built from are replaced."""
    directory = Path(directory)
    ds_dir = directory / DS_DIR
    check_world(directory, world)
    phases_file = ds_dir / _phases_name(rank)
    if not phases_file.exists():
        raise FileNotFoundError(f"{phases_file} is missing: rank {rank}'s part of the checkpoint "
                                f"{directory} was not merged into it")
    phases = torch.load(phases_file, weights_only=True)
    opt = learner.opt
    # DeepSpeed loads the saved active phase into the base optimizer's current state: make it
    # the same phase first (its lr and weight decay too)
    opt.set_phase(phases["phase"])
    check_lora(directory, learner.cfg, learner.model_path)
    load_path, _ = learner.engine.load_checkpoint(
        str(ds_dir), tag=TAG, load_module_strict=not learner.lora, load_optimizer_states=True,
        load_lr_scheduler_states=False)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint under {ds_dir / TAG}")
    # the other phase(s): loaded into their own state; the active one stays the object DeepSpeed
    # filled (its ZeRO fragments point into it)
    with _master_params_in_groups(learner):
        for ph, sd in phases["states"].items():
            opt.set_phase(ph)
            torch.optim.AdamW.load_state_dict(opt, sd)
        opt.set_phase(phases["phase"])


def _lora_of(cfg, model_path: str = "") -> dict | None:
    """What a LoRA checkpoint's state depends on: the adapters' shape and scaling, and the
    base model (as named, and its fingerprint when ``model_path`` is given)."""
    lora = cfg.model.lora
    if not lora.rank:
        return None
    out = dict(lora_settings(lora), base=cfg.model.path)
    out.pop("lora_dropout")  # no part of the state: a resume may change it
    if model_path:
        out["base_fingerprint"] = base_fingerprint(model_path)
    return out


def check_lora(directory: Path, cfg, model_path: str = "") -> None:
    """A LoRA checkpoint holds the adapters alone: it resumes only a LoRA run with the same
    adapters on the same base model (its weights too, with ``model_path``: the folder this
    run resolved model.path to), and a full one only a full run. ValueError saying so
    otherwise."""
    meta = json.loads((Path(directory) / DS_DIR / _meta_name(0)).read_text())
    saved, now = meta.get("lora") or None, _lora_of(cfg, model_path)
    if saved and now and not model_path:  # no base folder to fingerprint: the rest must match
        saved.pop("base_fingerprint", None)
    if saved != now:
        def say(x):
            return "a full fine-tune" if x is None else \
                f"LoRA {', '.join(f'{k}={v}' for k, v in x.items())}"
        raise ValueError(f"checkpoint {directory} was written by {say(saved)}; this run is "
                         f"{say(now)}: resume with the checkpoint's model.path (the same base "
                         f"weights) and model.lora")


SCHEDULER_STATE = "scheduler_state.json"


def save_policy(learner, folder: Path, rank: int, model_path: str) -> None:
    """Rank 0 writes the policy in HF format with its tokenizer (loadable by from_pretrained;
    model_path may be a local dir or a hub id); every rank must call it (under ZeRO-3 each
    holds a part of the weights). A LoRA run's policy is its adapter folder (PEFT's, naming
    the base model) and, with train.save_merged, the merged model beside it (``merged/``)."""
    if learner.lora:
        _save_lora_policy(learner, Path(folder), rank, model_path)
        return
    with learner.gathered():
        if rank == 0:
            learner.engine.module.save_pretrained(folder)
    if rank == 0:
        # transformers: after skip_unused_modules() (relift_ray.imports)
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(model_path).save_pretrained(folder)


def _save_lora_policy(learner, folder: Path, rank: int, model_path: str) -> None:
    weights = learner.adapter_weights()
    merged = learner.full_state_dict() if learner.cfg.train.save_merged else None
    if rank != 0:
        return
    # transformers: after skip_unused_modules() (relift_ray.imports)
    from transformers import AutoTokenizer
    write_adapter(folder, weights, learner.cfg.model.path, model_path,
                  learner.cfg.model.dtype)
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.save_pretrained(folder)
    if merged is not None:
        out = folder.with_name("merged")
        base = learner.engine.module.get_base_model()
        base.save_pretrained(out, state_dict=merged)
        tok.save_pretrained(out)


def save_best(learner, best: Path, step: int, rank: int, val: dict,
              model_path: str) -> Path:
    """The policy of ``step`` (HF format, with its tokenizer) as ``best``/policy, with
    best/meta.json saying which step and validation it is. It is written whole into its own
    folder (``best-step<s>``), and ``best`` is a link swapped onto it in one rename, so at
    every moment ``best`` is a complete policy, the old one or the new: a crash never leaves
    a half-written best, nor none."""
    tmp = best.with_name(f"{best.name}-step{step}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    save_policy(learner, tmp / "policy", rank, model_path)
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps(
            {"step": step, "score": val["score"], "sources": val["sources"]}, indent=1))
        target = best.with_name(f"{best.name}-step{step}")
        if best.is_symlink() and best.resolve().name == target.name:  # the same step again
            target = best.with_name(f"{target.name}-again")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        point_at(best, target)
        for old in best.parent.glob(f"{best.name}-step*"):  # the bests it replaced
            if old.name != target.name and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    return best / "policy"


def point_at(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target`` in one rename (atomic on POSIX); a real
    folder at ``link`` (a run from before links) moves aside first."""
    new = link.with_name(link.name + ".link")
    if new.is_symlink() or new.exists():
        new.unlink()
    os.symlink(target.name, new)
    if link.exists() and not link.is_symlink():
        legacy = link.with_name(f"{link.name}-step0-legacy")
        shutil.rmtree(legacy, ignore_errors=True)
        link.rename(legacy)
    os.replace(new, link)


def scratch_dir(run_dir: Path) -> Path:
    """This machine's folder for a run's checkpoints on their way to storage and back: one
    per run folder, so that a worker can clear what a crash left there (a 7B checkpoint is
    tens of GB) without touching another run's."""
    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"relift-{Path(run_dir).name}-{key}"


def clear_scratch(scratch: Path, rank: int) -> list[str]:
    """Remove rank ``rank``'s folders that a crashed worker left in ``scratch`` (a save not yet
    uploaded, a checkpoint being read); the names removed. Ray Train deletes a save once it
    is uploaded; a new worker starts after the old one is gone, so none is in use."""
    gone = []
    for p in sorted(scratch.glob(f"*-r{rank}-*")) if scratch.exists() else []:
        shutil.rmtree(p, ignore_errors=True)
        gone.append(p.name)
    return gone


def complete_marker(rank: int) -> str:
    return f"complete-r{rank}.json"


def mark_complete(directory: Path, rank: int) -> None:
    """Rank ``rank``'s part of a checkpoint is written: every file under ``directory`` and its
    size, in ``complete-r{rank}.json``, written last (through a temporary name)."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): p.stat().st_size
             for p in sorted(directory.rglob("*")) if p.is_file()}
    tmp = directory / (complete_marker(rank) + ".tmp")
    tmp.write_text(json.dumps(files))
    os.replace(tmp, directory / complete_marker(rank))


def checkpoint_problem(directory: Path, world: int) -> str:
    """Why the checkpoint in ``directory`` cannot be resumed from ("" when it can): a rank's
    marker missing (a crash or a full disk while it was written), or a file it lists missing
    or of another size (truncated, or replaced after the save). A checkpoint written before
    markers existed (none at all, but a learner state) is taken as complete."""
    directory = Path(directory)
    markers = [directory / complete_marker(r) for r in range(world)]
    if not any(m.exists() for m in markers):
        return "" if (directory / "meta.json").exists() else "no meta.json and no markers"
    for r, m in enumerate(markers):
        if not m.exists():
            return f"rank {r}'s part is incomplete ({m.name} is missing)"
        try:
            files = json.loads(m.read_text())
        except ValueError:
            return f"{m.name} is not valid JSON"
        for name, size in files.items():
            f = directory / name
            if not f.is_file():
                return f"{name} (rank {r}) is missing"
            if f.stat().st_size != size:
                return f"{name} (rank {r}) has {f.stat().st_size} bytes, {size} when saved"
    return ""


def save_checkpoint(learner, scheduler, step: int, rank: int, world: int,
                    model_path: str, scratch: Path | None = None,
                    within: float | None = None) -> str:
    """This rank's part of the checkpoint of ``step``, in a fresh folder (Ray Train merges the
    ranks' folders): DeepSpeed's checkpoint (each rank's fp32 master partition and optimizer
    states, ``save_learner``); rank 0 also the HF-format policy with its tokenizer (for
    evaluation and serving), the scheduler's whole state (JSON) and meta.json. The folder is
    in ``scratch`` (``scratch_dir``) when given, else a new temporary one; ``within``: the
    deadline of the call for the scheduler's state (cluster.batch_deadline_s)."""
    if scratch is None:
        d = Path(tempfile.mkdtemp(prefix=f"relift-save-{rank}-"))
    else:
        d = scratch / f"save-r{rank}-s{step}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    save_learner(learner, d, rank, world)
    save_policy(learner, d / "policy", rank, model_path)
    if rank == 0:
        state = call_within(within, "scheduler", scheduler, "state_dict", step=step)
        (d / SCHEDULER_STATE).write_text(json.dumps(state))
        (d / "meta.json").write_text(json.dumps({"step": step}))
    mark_complete(d, rank)
    return str(d)
