"""The training job: ReLIFT (or rl / sft / ... by ``algo.mode``) on Ray, in six phases.

1. prepare   what can fail before Ray starts fails here: the model path, the data files and
             rows, a vLLM context too short for prompt plus response;
2. start     Ray (relift_ray.runtime.cluster), the job's console, the actors and the learner
             group (relift_ray.runtime.topology), the MLflow run: the learner group, the
             longest chain to step 1, starts as soon as the actors it talks to exist;
3. evaluate base   the base policy on the test split (tracking.eval_before=start), while the
             learner group starts;
4. fit       the learner group trains (relift_ray.learner.loop) until the last step;
5. evaluate  the final policy (and the base policy, with tracking.eval_before=end);
6. finish    the per-question table and pictures, the timeline, the checkpoints and the
             summary to MLflow; the summary printed.

Re-running with the same ``name`` and ``output_dir`` resumes from the last checkpoint and
continues the same MLflow run. ``jobs/train.py`` and ``relift train`` call ``run(cfg)``,
which returns a ``RunSummary``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from relift_ray.background import Background
from relift_ray.config import RunConfig
from relift_ray.data.load import read_questions
from relift_ray.data.lora import check_targets_of
from relift_ray.data.registry import resolve_model
from relift_ray.imports import skip_unused_modules
from relift_ray.records import DataInfo, RunSummary
from relift_ray.rollout.evaluate import evaluate
from relift_ray.run_lock import RunLock
from relift_ray.runtime import topology
from relift_ray.runtime.cluster import dashboard_line, init_ray
from relift_ray.tracking.console import Console, say
from relift_ray.tracking.timeline import overlap_seconds
from relift_ray.tracking.tracker import Tracker, run_id_key, share_run_id, write_csv


@dataclass
class Job:
    """What one training job carries from phase to phase."""
    cfg: RunConfig
    model_path: str
    t_start: float  # the job's start as a user sees it: the process's, imports included
    phases: dict = field(default_factory=dict)  # start-up seconds by phase
    console: object = None
    topo: topology.Topology | None = None
    tracker: object = None
    trainer: object = None
    fitting: Background | None = None  # trainer.fit running
    budget_from: int = 0  # the newest checkpoint's step when the failure budget began
    data: DataInfo | None = None
    before: dict = field(default_factory=dict)  # the base policy's test accuracy
    lock: RunLock | None = None  # this job's hold on its run folder

    def mark(self, phase: str) -> None:
        """The seconds since the previous mark, as ``phase``'s share of the start-up."""
        self.phases[phase] = time.time() - self.t_start - sum(self.phases.values())


def run(cfg: RunConfig) -> RunSummary:
    job = prepare(cfg)
    status = "FAILED"
    try:
        start(job)
        evaluate_base_first(job)
        result = fit(job)
        after = evaluate_final(job)
        summary = finish(job, result, after)
        status = "FINISHED"
        return summary
    finally:
        stop(job, status)


# ---------------------------------------------------------------- 1. prepare

def prepare(cfg: RunConfig) -> Job:
    """A bad model.path, LoRA target, data path or row, or vLLM context stops here, before
    Ray starts."""

    t_start = _process_start()
    skip_unused_modules()
    model_path = resolve_model(cfg.model.path)
    if cfg.model.lora.rank:  # a target module the model lacks: named here, not in a worker
        check_targets_of(model_path, cfg.model.lora.target_modules)
    if cfg.generator.backend == "vllm":
        topology.check_model_len(cfg.generator.max_model_len, model_path,
                                 cfg.data.max_prompt_tokens + cfg.algo.max_new_tokens,
                                 f"data.max_prompt_tokens + algo.max_new_tokens "
                                 f"({cfg.data.max_prompt_tokens} + {cfg.algo.max_new_tokens})")
    read_questions(cfg)  # the scheduler renders them; a bad file or row stops here
    job = Job(cfg, model_path, t_start)
    job.lock = RunLock(cfg.run_dir)  # a second job on the same folder stops here
    return job


def _process_start() -> float:
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:
        return time.time()


def _import_ahead() -> None:
    """What the driver imports after ray.init (torch, Ray Train, the actors' classes, MLflow:
    ~3 s of CPU), imported in a thread meanwhile: ray.init mostly waits for Ray's processes."""
    import importlib
    for name in ("ray.train.torch", "relift_ray.learner.loop", "relift_ray.rollout.hf",
                 "relift_ray.scheduler.actor", "mlflow"):
        importlib.import_module(name)


# ---------------------------------------------------------------- 2. start

def start(job: Job) -> None:
    """Ray, the console, the actors, the learner group (already fitting unless the base
    evaluation must come first), and the MLflow run; then the data as the scheduler read it.

    The learner group starts (processes, imports, DeepSpeed) while the driver opens the
    MLflow run and the actors start; rank 0 finds the run id in Ray's key-value store once
    the driver has it. With tracking.eval_before=start the base model is evaluated meanwhile:
    the first step queues behind that evaluation on the generators, which hold the base
    weights, version 0, until the learners publish. A resumed run publishes its checkpoint's
    weights at once, so it evaluates first unless that evaluation is already logged; so do
    vLLM engines, whose weight updates (and, colocated, GPU memory) must not interleave with
    the evaluation."""

    cfg = job.cfg
    warm = Background(_import_ahead, "relift-imports")
    init_ray(cfg)
    warm.result()
    job.console = Console.start()
    # said once the dashboard answers (or fails to, 5 s): nothing waits for it
    Background(lambda: say(dashboard_line()), "relift-dashboard-probe")
    job.mark("python+ray")

    job.topo = topology.start(cfg, job.model_path, say)
    resuming = topology.check_resumable(cfg, job.model_path)
    job.budget_from = topology.newest_checkpoint_step(cfg)
    key = run_id_key(cfg.name)
    job.trainer = topology.learner_group(cfg, job.model_path, job.topo, key, job.t_start)
    if not _evaluates_first(cfg, resuming, logged=False):
        job.fitting = Background(job.trainer.fit, "ray-train-fit")
    job.mark("learners started")

    job.tracker = _open_run(job)
    share_run_id(key, job.tracker.run_id)
    job.before = job.tracker.logged("test_before/") if job.tracker.resumed else {}
    if job.fitting is None and not _evaluates_first(cfg, resuming, logged=bool(job.before)):
        job.fitting = Background(job.trainer.fit, "ray-train-fit")
    job.mark("mlflow")

    job.data = ray.get(job.topo.scheduler.data_info.remote())
    _log_data(job, say)
    job.mark("data")
    ray.get([a.__ray_ready__.remote() for a in job.topo.actors])
    job.mark("actors")


def _evaluates_first(cfg: RunConfig, resuming: bool, logged: bool) -> bool:
    """Whether the learner group waits for the base evaluation: with eval_before=start, a
    vLLM run always, a transformers run when it resumes and the evaluation is not logged."""
    if cfg.tracking.eval_before != "start":
        return False
    return cfg.generator.backend != "transformers" or (resuming and not logged)


def _open_run(job: Job):
    """The job's MLflow run: a new one, or the one this run's folder names (a resumed run)."""

    cfg = job.cfg
    run_id_file = job.cfg.run_dir / "mlflow_run_id"
    resumed_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    tracker = Tracker(cfg.mlflow_uri, cfg.tracking.experiment, cfg.name,
                      tags={"mode": cfg.algo.mode}, artifact_root=cfg.artifact_root,
                      run_id=resumed_id)
    job.cfg.run_dir.mkdir(parents=True, exist_ok=True)
    run_id_file.write_text(tracker.run_id)
    return tracker


def _log_data(job: Job, say) -> None:
    cfg, data, tracker = job.cfg, job.data, job.tracker
    if data.dropped:
        say(f"[data] dropped {data.dropped} of {data.train + data.dropped} training questions "
            f"whose prompt exceeds data.max_prompt_tokens={cfg.data.max_prompt_tokens}")
    say(f"[driver] run {cfg.name!r}: mode {cfg.algo.mode}, {data.train} training "
        f"questions, {len(data.test)} test questions, {data.steps} steps"
        + (f" ({cfg.train.epochs} epochs)" if cfg.train.epochs else "")
        + f", model {job.model_path}"
        + (f"; continuing MLflow run {tracker.run_id}" if tracker.resumed else ""))
    tracker.log_config(cfg)
    tracker.set_tags({"mlflow.note.content": describe(cfg, data, job.model_path)})
    tracker.log_metrics({"data_dropped_long_prompts": data.dropped,
                         "train_questions": data.train})


# ---------------------------------------------------------------- 3. evaluate base

def evaluate_base_first(job: Job) -> None:
    """The base policy on the test split before step 1 (unless already logged)."""

    eval_first = job.cfg.tracking.eval_before == "start"
    if not job.before and eval_first:
        job.before = _evaluate_base(job)
        job.mark("evaluation")
    say(f"[driver] actors{' and base evaluation' if eval_first else ''} ready "
        f"{time.time() - job.t_start:.1f}s after the start: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in job.phases.items()))


def _evaluate_base(job: Job) -> dict:

    acc = _evaluate(job)
    job.tracker.log_metrics({f"test_before/{k}": v for k, v in acc.items()}, step=0)
    say(f"[driver] test accuracy before training: {_fmt(acc)}")
    return acc


def _evaluate(job: Job) -> dict:
    return evaluate(job.topo.generators, job.topo.rewarders, list(job.data.test),
                    max_new_tokens=job.cfg.algo.max_new_tokens)


# ---------------------------------------------------------------- 4. fit

def fit(job: Job):
    """The learner group's result (Ray Train's), once it has trained every step.

    Ray Train restarts a failed group up to train.max_failures times. The budget is not one
    number for the whole run: when it runs out, a group that has checkpointed since the
    budget began starts again from its checkpoint with a new one (a long run meets faults
    spread over days), and only a group that made no progress over the whole budget ends
    the run."""
    fitting = job.fitting or Background(job.trainer.fit, "ray-train-fit")
    while True:
        try:
            return fitting.result()
        except ray.train.TrainingFailedError as e:
            cfg = job.cfg
            newest = topology.newest_checkpoint_step(cfg)
            if newest <= job.budget_from:
                raise
            say(f"[train] the learner group failed {cfg.train.max_failures + 1} times "
                f"(train.max_failures={cfg.train.max_failures}; last: {type(e).__name__}); "
                f"it checkpointed step {newest} since its failure budget began at step "
                f"{job.budget_from}, so it starts again from there with a new budget")
            job.budget_from = newest
            job.trainer = topology.learner_group(cfg, job.model_path, job.topo,
                                                 run_id_key(cfg.name), job.t_start)
            fitting = Background(job.trainer.fit, "ray-train-fit")


# ---------------------------------------------------------------- 5. evaluate

def evaluate_final(job: Job) -> dict:
    """The final policy on the test split; then, with tracking.eval_before=end, the base
    policy (the generators read the base weights again)."""

    after = _evaluate(job)
    job.tracker.log_metrics({f"test_after/{k}": v for k, v in after.items()},
                            step=job.data.steps)
    if not job.before and job.cfg.tracking.eval_before == "end":
        ray.get([g.load_base.remote() for g in job.topo.generators])
        job.before = _evaluate_base(job)
    return after


# ---------------------------------------------------------------- 6. finish

def finish(job: Job, result, after: dict) -> RunSummary:
    """Tables, pictures and checkpoints to MLflow; the summary logged and printed."""

    cfg, tracker, scheduler = job.cfg, job.tracker, job.topo.scheduler
    _log_timeline(job, ray.get(scheduler.get_timeline.remote()))
    table = _log_questions(job, ray.get(scheduler.question_rows.remote()))
    final = ray.get(scheduler.state_dict.remote())
    reward_stats = ray.get([r.get_stats.remote() for r in job.topo.rewarders])
    ckpt = result.checkpoint.path if result.checkpoint else ""
    tracker.set_tags({"final_checkpoint": ckpt,
                      "final_policy": str(Path(ckpt) / "policy") if ckpt else ""})
    s = RunSummary(run_id=tracker.run_id, before=job.before, after=after,
                   sft_steps=final["counters"]["sft_steps"],
                   demos_used_unique=len(final["demos_used"]),
                   demos_used_total=final["counters"]["demos_used_total"],
                   demos_available=job.data.demos,
                   reward_timeouts=sum(x["timeouts"] for x in reward_stats),
                   reward_deaths=sum(x.get("deaths", 0) for x in reward_stats),
                   reward_memory=sum(x.get("memory", 0) for x in reward_stats),
                   reward_killed=sum(x.get("killed", 0) for x in reward_stats),
                   checkpoint=ckpt, question_table=str(table),
                   wall_seconds=time.time() - job.t_start)
    _add_validation(job, s, final.get("validation") or {})
    if cfg.tracking.register_model and ckpt:
        policies = {"final": Path(ckpt) / "policy"}
        if s.best_policy:
            policies["best"] = Path(s.best_policy)
        for alias, folder in policies.items():
            tags = {"base_model": cfg.model.path, "base_model_path": job.model_path}
            if cfg.model.lora.rank:  # the adapter, and the model it makes with its base
                tags.update(lora_adapter=str(folder), lora_rank=cfg.model.lora.rank)
                folder = resolve_model(str(folder), log=say)
            s.mlflow_models[alias] = tracker.log_policy(folder, f"{alias}_policy", cfg.name,
                                                        alias, cfg.algo.max_new_tokens, tags)
    tracker.log_metrics(s.numbers())
    job.console.stop()
    print_summary(cfg, s)
    return s


def _log_timeline(job: Job, events: list[dict]) -> None:

    job.tracker.log_timeline(events)
    if job.cfg.algo.max_staleness:
        say(f"[driver] generation overlapped learning for {overlap_seconds(events):.1f} s "
            f"(algo.max_staleness={job.cfg.algo.max_staleness}; timeline.png in MLflow)")


def _log_questions(job: Job, rows: list[dict]) -> Path:
    """questions.csv and questions.png in the run's folder and in MLflow; the csv's path."""

    path = job.cfg.run_dir / "questions.csv"
    write_csv(rows, path)
    job.tracker.log_table(rows, "questions.csv")
    moves = job.tracker.log_questions(rows, job.cfg.run_dir, job.cfg.name)
    job.tracker.log_metrics({"hardest_left": sum(moves["hardest_left"].values()),
                             "hardest_left_after_sft":
                                 sum(moves["hardest_left_after_sft"].values())})
    return path


def _add_validation(job: Job, s: RunSummary, val: dict) -> None:
    """The best and last validations while training (tracking.eval_every), if any."""
    if not val.get("best"):
        return
    s.best_policy = str(job.cfg.best_dir / "policy")
    s.val_best_score, s.val_best_step = val["best"]["score"], val["best"]["step"]
    s.val_last_score, s.val_last_step = val["last"]["score"], val["last"]["step"]
    job.tracker.set_tags({"best_step": s.val_best_step, "best_policy": s.best_policy,
                          "best_val_score": f"{s.val_best_score:.4f}"})


def stop(job: Job, status: str) -> None:
    """The MLflow run ended with ``status``, the actors gone, the console flushed."""
    if job.tracker is not None:
        job.tracker.end(status)
    if job.topo is not None:
        job.topo.stop()
    if job.console is not None:
        job.console.stop()
    if job.lock is not None:
        job.lock.release()


def describe(cfg: RunConfig, data: DataInfo, model_path: str) -> str:
    """The MLflow run's description: what was run, in one line."""
    a, c = cfg.algo, cfg.cluster
    return (f"{a.mode} on {cfg.data.train} ({data.train} questions, test {cfg.data.test}): "
            f"{data.steps} steps of {a.batch_size} questions x {a.n_samples} rollouts, "
            f"model {cfg.model.path} ({model_path}), {c.num_learners} learner(s), "
            f"{c.num_generators} {cfg.generator.backend} generator(s)")


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in acc.items())


def print_summary(cfg: RunConfig, s: RunSummary) -> None:
    levels = [k for k in s.after if k != "overall"] + ["overall"]
    print("\n" + "=" * 60)
    print(f"run {cfg.name} ({cfg.algo.mode}) finished in {s.wall_seconds:.0f}s")
    print(f"{'test accuracy':<16}{'before':>10}{'after':>10}")
    for k in levels:
        b = s.before.get(k)
        print(f"{k:<16}{'-' if b is None else f'{b:.3f}':>10}{s.after[k]:>10.3f}")
    print(f"SFT steps: {s.sft_steps}; demonstrations used: {s.demos_used_unique} unique, "
          f"{s.demos_used_total} total, of {s.demos_available} available")
    if s.reward_timeouts or s.reward_deaths or s.reward_memory or s.reward_killed:
        print(f"scoring: {s.reward_timeouts} answers past the time limit, {s.reward_memory} "
              f"past the memory limit, {s.reward_killed} that killed the scoring process; "
              f"{s.reward_deaths} scoring processes restarted after dying")
    if s.val_best_score is not None:
        print(f"validation (every {cfg.tracking.eval_every} steps, temperature "
              f"{cfg.tracking.val_temperature:g}): best {s.val_best_score:.3f} at step "
              f"{s.val_best_step}, last {s.val_last_score:.3f} at step {s.val_last_step}")
        print(f"best policy: {s.best_policy}")
    print(f"checkpoint: {s.checkpoint}")
    if s.mlflow_models:
        print("MLflow model: " + ", ".join(s.mlflow_models.values()))
    print(f"question table: {s.question_table}")
    print(f"MLflow run {s.run_id} in {cfg.mlflow_uri}")
    print("=" * 60, flush=True)
