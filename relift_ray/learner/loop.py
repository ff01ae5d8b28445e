"""The learner group's loop: what each Ray Train worker runs, in three phases.

1. restore: the learner from the checkpoint Ray Train hands the worker (or the base model),
   and the scheduler back to the state saved with that same checkpoint (or to its start), so
   both sides agree after a crash: Ray Train may restart from an older checkpoint than the
   newest;
2. publish: weight version ``start`` to every generator (the checkpoint's weights, or the
   base weights again: a restarted generator may hold others);
3. loop: ``learner_step`` (relift_ray.learner.step) until the last step, with validation
   every ``tracking.eval_every`` steps and a checkpoint every ``train.checkpoint_every``;
   rank 0 logs each step to MLflow (in the background) and prints the progress line.

The runtime layer (relift_ray.runtime.topology) starts the group with a ``LoopSpec``
(relift_ray.records) as Ray Train's ``train_loop_config``.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import torch

from relift_ray import faults
from relift_ray.config import RunConfig
from relift_ray.imports import skip_unused_modules
from relift_ray.learner.checkpoint import (
    SCHEDULER_STATE,
    checkpoint_problem,
    clear_scratch,
    load_learner,
    save_best,
    save_checkpoint,
    scratch_dir,
)
from relift_ray.learner.learner import Learner
from relift_ray.learner.step import learner_step, progress_line
from relift_ray.learner.weight_sync import make_publisher
from relift_ray.records import LoopSpec, StepMetrics
from relift_ray.rollout.calls import call_within
from relift_ray.rollout.placement import pin_learner_gpu
from relift_ray.tracking.console import say
from relift_ray.tracking.tracker import StepLogger, shared_run_id


@dataclass
class Worker:
    """One Ray Train worker's place in the run: its rank, the run's config and the actors."""
    spec: LoopSpec
    cfg: RunConfig
    rank: int
    world: int
    scheduler: object
    generators: list

    @property
    def lead(self) -> bool:
        return self.rank == 0

    @property
    def within(self) -> float:
        """The deadline of a call to the scheduler (its actor is killed as dead past it)."""
        return self.cfg.cluster.batch_deadline_s


def train_loop_per_worker(config: dict) -> None:
    """Each Ray Train worker (``config``: {"spec": LoopSpec}): restore, publish, loop."""
    skip_unused_modules()
    w = join(config["spec"])
    learner, start = restore(w)
    publisher = publish_start(w, learner, start)
    # train.epochs: from the questions kept
    steps = call_within(w.within, "scheduler", w.scheduler, "total_steps")
    loop(w, learner, publisher, start, steps)


def join(spec: LoopSpec) -> Worker:
    """This worker's rank, the actors' handles, its seed, GPU and threads."""

    ctx = ray.train.get_context()
    cfg = RunConfig.from_dict(spec.cfg)
    scheduler, generators = ray.get(spec.actors)  # the driver's handles
    w = Worker(spec, cfg, ctx.get_world_rank(), ctx.get_world_size(), scheduler, generators)
    torch.manual_seed(cfg.train.seed + w.rank)
    if spec.engines:  # colocated vLLM: the GPU of the engine on this node
        pin_learner_gpu(spec.engines)
    if cfg.cluster.torch_threads and not cfg.cluster.use_gpu:
        torch.set_num_threads(cfg.cluster.torch_threads)
    return w


def restore(w: Worker) -> tuple[Learner, int]:
    """The learner and the step it resumes after (0: the start). DeepSpeed's own checkpoint
    (fp32 master weights, both optimizer phases) goes into the engine built from the base
    model, so a bf16 run continues bit for bit; rank 0 puts the scheduler back."""

    start, ckpt_dir = 0, None
    scratch = scratch_dir(w.cfg.run_dir)
    left = clear_scratch(scratch, w.rank)
    if left:
        say(f"[learner] rank {w.rank}: removed {len(left)} folder(s) a crash left in {scratch} "
            f"({', '.join(left[:3])})")
    ckpt_dir = readable_checkpoint(w, scratch / f"ckpt-r{w.rank}-read")
    if ckpt_dir is not None:
        start = json.loads((ckpt_dir / "meta.json").read_text())["step"]
    t_ready = time.time()
    learner = Learner(w.cfg, w.spec.model_path, w.world, w.rank)
    if w.lead and w.spec.job_start:
        say(f"[learner] {w.world} learner(s) ready {time.time() - w.spec.job_start:.1f}s "
            f"after the job started (DeepSpeed engine: {time.time() - t_ready:.1f}s)")
    if ckpt_dir:
        load_learner(learner, ckpt_dir, w.rank, w.world)
    if w.lead:
        if ckpt_dir:
            state = json.loads((ckpt_dir / SCHEDULER_STATE).read_text())
            call_within(w.within, "scheduler", w.scheduler, "load_state_dict", state)
            say(f"[learner] resumed from the checkpoint of step {start}")
        else:
            call_within(w.within, "scheduler", w.scheduler, "reset")
    if ckpt_dir:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return learner, start


def readable_checkpoint(w: Worker, into: Path) -> Path | None:
    """The newest of the run's checkpoints that is complete (``checkpoint_problem``),
    downloaded into ``into``; None: none (the run starts from the base model). Ray Train
    hands over its newest; one that a crash or a full disk left incomplete is skipped, with a
    console line, for the one before it. Every rank reads the same files, so all decide alike."""
    ckpt = ray.train.get_checkpoint()
    for c in [ckpt, *earlier_checkpoints(ckpt)] if ckpt is not None else []:
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        try:
            c.to_directory(str(into))
            problem = checkpoint_problem(into, w.world)
        except (OSError, ValueError) as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        if not problem:
            return into
        if w.lead:
            say(f"[learner] checkpoint {c.path} is skipped: {problem}; trying the one before "
                f"it")
    shutil.rmtree(into, ignore_errors=True)
    if ckpt is not None and w.lead:
        say("[learner] no complete checkpoint: the run starts again from the base model")
    return None


def earlier_checkpoints(ckpt) -> list:
    """Ray Train's other checkpoints of this run, older than ``ckpt``, newest first (their
    folders, checkpoint_<time>, sort by time), on its storage's filesystem."""
    import pyarrow.fs as pafs
    here = ckpt.path.rstrip("/")
    parent = here.rsplit("/", 1)[0]
    infos = ckpt.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path < here), reverse=True)
    return [ray.train.Checkpoint(p, filesystem=ckpt.filesystem) for p in older]


def publish_start(w: Worker, learner: Learner, start: int):
    """The run's weight publisher, having sent weight version ``start`` to the generators."""

    publisher = make_publisher(w.cfg, w.generators, w.rank, w.scheduler)
    publisher.publish(learner, start)
    torch.distributed.barrier()  # no rank asks for a batch before the scheduler is restored
    return publisher


def loop(w: Worker, learner: Learner, publisher, start: int, steps: int) -> None:
    """``learner_step`` from ``start + 1`` to ``steps``, with validation and checkpoints."""
    cfg, tracker = w.cfg, None
    if w.lead and w.spec.mlflow_run_key:
        tracker = StepLogger(w.spec.mlflow_uri, lambda: shared_run_id(w.spec.mlflow_run_key),
                             cfg.name)
    t_prev = time.perf_counter()
    for step in range(start + 1, steps + 1):
        if w.rank == w.world - 1 and faults.due(cfg, "checkpoint", step):
            every = cfg.train.checkpoint_every
            hit = faults.corrupt_checkpoint(Path(cfg.storage_path) / cfg.name,
                                            (step - 1) // every * every, w.world)
            say(f"[learner] train.kill checkpoint@{step}: truncated {hit}")
        if w.rank == w.world - 1 and faults.due(cfg, "learner", step):
            say(f"[learner] rank {w.rank}: train.kill learner@{step}: SIGKILL")
            faults.kill()
        m = learner_step(learner, w.scheduler, publisher, step, w.rank, w.world, w.within)
        if cfg.tracking.eval_every and step % cfg.tracking.eval_every == 0:
            m.validation = validate_step(w, learner, step, tracker)
        if step % cfg.train.checkpoint_every == 0 or step == steps:
            m.checkpoint_seconds = checkpoint(w, learner, step)
        now = time.perf_counter()
        m.step_seconds = now - t_prev  # wall time since the previous step ended
        t_prev = now
        if w.lead:
            report(w, steps, start, m)
            if tracker:
                tracker.log(step, m.flat())  # in the background: off the step's path
    if tracker:
        tracker.close()


def checkpoint(w: Worker, learner: Learner, step: int) -> float:
    """Every rank's part of step ``step``'s checkpoint, reported to Ray Train; its seconds.

    Ray Train hears from the loop only when there is a checkpoint: it needs nothing else (the
    metrics go to MLflow from rank 0), and in Ray Train V2 each report waits for the
    controller's next poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default) when the
    previous one is still queued, which reporting every step would pay."""

    t0 = time.perf_counter()
    path = save_checkpoint(learner, w.scheduler, step, w.rank, w.world, w.spec.model_path,
                           scratch_dir(w.cfg.run_dir), within=w.within)
    ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(path),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
    return time.perf_counter() - t0


def report(w: Worker, steps: int, start: int, m: StepMetrics) -> None:
    """Rank 0's console lines for a step: the progress line, and after the first step the
    time since the job started and the sampler/learner log-prob mismatch."""
    first, u = m.step == start + 1, m.update
    if first and "mismatch/logprob_abs_diff_mean" in u:
        say(f"[learner] sampler vs learner log-probs of step {m.step}'s "
            f"{u['mismatch/tokens']} tokens: mean |diff| "
            f"{u['mismatch/logprob_abs_diff_mean']:.2e}, max "
            f"{u['mismatch/logprob_abs_diff_max']:.2e} "
            f"(algo.is_correction={w.cfg.algo.is_correction})")
    if first and w.spec.job_start:
        say(f"[learner] step {m.step} done {time.time() - w.spec.job_start:.1f}s "
            f"after the job started")
    say(progress_line(steps, m))


def validate_step(w: Worker, learner: Learner, step: int, tracker=None) -> dict:
    """Validation after step ``step`` (tracking.eval_every): rank 0 has the scheduler
    validate the generators, which hold this step's weights; when it is the best so far
    every rank takes part in gathering the weights and rank 0 writes the policy to
    <output_dir>/<name>/best (replacing the previous best) and tags the MLflow run."""
    box = [call_within(w.cfg.cluster.validate_deadline_s, "scheduler", w.scheduler,
                       "validate", step, step=step) if w.lead else None]
    if w.world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    val = box[0]
    out = {"val/score": val["score"], "val/seconds": val["seconds"],
           **{f"val/{src}": v for src, v in val["sources"].items()}}
    if val["is_best"]:
        cfg = w.cfg
        path = save_best(learner, cfg.best_dir, step, w.rank,
                         val, w.spec.model_path)
        if w.lead and tracker is not None:
            tracker.set_tags({"best_step": step, "best_val_score": f"{val['score']:.4f}",
                              "best_policy": str(path)})
    out["val/best_score"] = val["best_score"]
    if w.lead:
        srcs = ", ".join(f"{k} {v:.3f}" for k, v in val["sources"].items())
        say(f"[validation] step {step}: {val['score']:.3f} ({srcs})"
            + (" - best so far, policy kept" if val["is_best"] else ""))
    return out
