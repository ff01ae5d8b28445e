"""The comparison job: RL, SFT, SFT-then-RL, ReLIFT and the paper's ablations side by side.

Every method starts from the same base model and runs the same number of learner steps
(``train.steps``) with the same seeds; each (method, seed) is one Ray task running a whole
in-process run (``relift_ray.jobs.in_process``), ``compare.parallel`` of them at once. Then:

- test accuracy per level and overall, greedy and avg@k at temperature 0.6, on the held-out
  split, as mean and spread (sample std) over seeds;
- demonstrations used (unique, total, share of all available), learner updates, wall time;
- the paper's bucket analysis: test questions bucketed by the base model's pass rate over
  N samples (Easy >= 6/8, Medium 3-5/8, Hard 1-2/8, Hardest 0/8), each method's gain per bucket;
- the test responses' length, share cut at the budget and the policy's entropy over them, at
  every evaluation point (SFT included);
- controls for ReLIFT's demonstrations: offline SFT on as many demonstrations as ReLIFT used
  in the same seed (``sft_matched_random``) or on exactly those (``sft_matched_hardest``),
  started when that ReLIFT run ends;
- the paper's claims as pre-registered (docs/preregistration_toy_claims.md), each with a
  verdict from 95% Welch intervals over seeds (``claims``);
- MLflow: one parent run, one child run per (method, seed) with its config, per-step metrics
  and accuracy curve; the tables and the figure as the parent's artifacts;
- CSV files and a PNG figure in ``<output_dir>/<name>/`` (relift_ray.jobs.compare_report).

The job reads as prepare / submit / wait / report (``run``).

    relift compare --config compare_toy compare.seeds=1,2,3
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from relift_ray.config import RunConfig, validate
from relift_ray.data.load import load_data
from relift_ray.data.lora import check_targets_of
from relift_ray.data.registry import resolve_model
from relift_ray.errors import ConfigError
from relift_ray.imports import skip_unused_modules
from relift_ray.jobs.compare_report import write_report
from relift_ray.records import BaseEval, RunResult
from relift_ray.rollout.evaluate import question_scores
from relift_ray.rollout.rewards import RewardWorker, worker_args
from relift_ray.run_lock import RunLock
from relift_ray.runtime.cluster import init_ray
from relift_ray.tracking.console import Console
from relift_ray.tracking.tracker import Tracker, finite_metrics

# What each method changes in the run's config (everything else is shared).
METHODS: dict[str, dict] = {
    "rl": {"mode": "rl"},  # RL only: no buffer, no SFT
    "sft": {"mode": "sft"},  # offline SFT over all demonstrations
    "sft_then_rl": {"mode": "sft_then_rl"},  # SFT for a share of the steps, then RL
    "relift": {"mode": "relift"},  # the released algorithm
    # the paper's ablations
    "sft_every_k": {"mode": "relift", "sft_trigger": "every_k"},  # fixed SFT schedule
    "non_hardest_buffer": {"mode": "relift", "buffer_feed": "non_hardest"},
    "sft_every_step": {"mode": "relift", "sft_trigger": "every_step"},
    # RL loss + SFT loss every step: on a demonstration of each question of the batch (the
    # paper's "RL w/ SFT loss"), or on those of the step's hardest questions alone
    "mixed": {"mode": "mixed", "mixed_demos": "all"},
    "mixed_hardest": {"mode": "mixed", "mixed_demos": "hardest"},
    # the released pure-RL baseline (train_rl.sh, the paper's RL row): the ratio clipped at
    # 0.2, advantages not divided by the std, the sum over tokens / L_max, gradients clipped
    # at 1.0; and clipped GRPO with std-normalised advantages and per-sequence token means
    "rl_released": {"mode": "rl", "rl_loss": "clipped", "clip_eps": 0.2, "grad_clip": 1.0},
    "grpo": {"mode": "rl", "rl_loss": "grpo"},
    # asynchronous rollouts: each batch sampled with weights one version behind the learner
    "relift_async": {"mode": "relift", "max_staleness": 1},
    "rl_async": {"mode": "rl", "max_staleness": 1},
    # ReLIFT training LoRA adapters alone (compare.lora_rank, rates x compare.lora_lr_scale)
    "relift_lora": {"mode": "relift", "lora": True},
    # controls for ReLIFT's demonstrations: offline SFT on as many as ReLIFT used in the same
    # seed, a random subset / exactly those (the same steps and SFT batch size as `sft`)
    "sft_matched_random": {"mode": "sft"},
    "sft_matched_hardest": {"mode": "sft"},
}
MATCHED = ("sft_matched_random", "sft_matched_hardest")  # they wait for relift's run


def matched_questions(method: str, train_qs: list, relift_ids, seed: int) -> list:
    """The training questions of a matched control: only those whose demonstration it trains
    on (offline SFT samples from the questions with a demonstration)."""
    with_demo = [q for q in train_qs if q.demo]
    if method == "sft_matched_hardest":
        ids = set(relift_ids)
        return [q for q in with_demo if q.id in ids]
    if method == "sft_matched_random":
        picked = set(random.Random(seed).sample(range(len(with_demo)), len(relift_ids)))
        return [q for i, q in enumerate(with_demo) if i in picked]
    raise ValueError(f"{method} is not a matched control ({', '.join(MATCHED)})")


def method_config(cfg: RunConfig, method: str, seed: int) -> RunConfig:
    if method not in METHODS:
        raise ConfigError(f"compare.methods: unknown method {method!r} "
                          f"(known: {', '.join(METHODS)})")
    unknown = [m for m in cfg.compare.steps if m not in METHODS]
    if unknown:
        raise ConfigError(f"compare.steps.{unknown[0]}: unknown method {unknown[0]!r} "
                          f"(known: {', '.join(METHODS)})")
    out = copy.deepcopy(cfg)
    spec = dict(METHODS[method])
    if spec.pop("lora", False):
        out.model.lora.rank = cfg.compare.lora_rank
        out.algo.lr *= cfg.compare.lora_lr_scale
        out.algo.sft_lr *= cfg.compare.lora_lr_scale
    for key, value in spec.items():
        setattr(out.algo, key, value)
    out.train.steps = cfg.compare.steps.get(method, cfg.train.steps)
    if method == "sft_then_rl":
        out.algo.sft_first_steps = max(1, round(out.train.steps * cfg.compare.sft_then_rl_fraction))
    out.train.seed = seed
    out.name = f"{cfg.name}-{method}-s{seed}"
    out.cluster.num_learners = 1
    return validate(out)


# ------------------------------------------------------------------ the Ray tasks

def _run_task(cfg_dict: dict, model_path: str, train_qs, test_qs, eval_every: int,
              eval_k: int, threads: int, base: BaseEval | None = None) -> RunResult:
    # in the Ray task, after skip_unused_modules(): torch, transformers, the learner
    from relift_ray.jobs.in_process import run_in_process
    skip_unused_modules()
    cfg = RunConfig.from_dict(cfg_dict)
    start = None if base is None else (base.greedy_scores, {
        **base.profile, "answered_ids": list(base.answered_ids)})
    return run_in_process(cfg, model_path, train_qs, test_qs, eval_every=eval_every,
                          eval_k=eval_k, threads=threads, start_point=start)


def _base_task(cfg_dict: dict, model_path: str, test_qs, eval_k: int, n_bucket: int,
               threads: int) -> BaseEval:
    """The base model on the test split: greedy, avg@k at 0.6, and its pass rate over N samples
    at the training temperature (what the buckets are made of)."""
    # in the Ray task: this module is imported by the driver too, which needs no torch
    import torch

    skip_unused_modules()

    # in the Ray task, after skip_unused_modules(): torch, transformers
    from transformers import AutoTokenizer

    from relift_ray.data.prompts import prepare_tokenizer
    from relift_ray.jobs.in_process import (
        close_generator,
        greedy_profile,
        run_generator,
        test_accuracy,
    )

    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(threads)
    rewarder = RewardWorker(*worker_args(cfg))
    gen = None
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        prepare_tokenizer(tok, cfg)
        gen = run_generator(cfg, model_path, f"{cfg.name}-base", threads)
        t = cfg.algo.max_new_tokens
        pass_rates = question_scores([gen], [rewarder], test_qs, n=n_bucket,
                                     temperature=cfg.algo.temperature, max_new_tokens=t, seed=1)
        greedy_scores, profile = greedy_profile(gen, rewarder, test_qs, t, tok.eos_token_id)
        answered = profile.pop("answered_ids")
        return BaseEval(**test_accuracy(gen, rewarder, test_qs, t, eval_k, seed=0,
                                        greedy_scores=greedy_scores),
                        pass_rates=pass_rates, profile=profile, answered_ids=answered)
    finally:
        if gen is not None:
            close_generator(gen)
        rewarder.close()


# ------------------------------------------------------------------ aggregation


# ------------------------------------------------------------------ the pre-registered claims


# ------------------------------------------------------------------ outputs


def _log_child(client, experiment_id: str, parent_id: str, cfg: RunConfig,
               r: RunResult) -> str:
    # MLflow (~1.5 s): where a run logs
    from mlflow.entities import Metric, Param


    run = client.create_run(experiment_id, run_name=cfg.name,
                            tags={"mlflow.parentRunId": parent_id, "method": r.method,
                                  "seed": str(r.seed), "mode": cfg.algo.mode})
    rid = run.info.run_id
    params = [Param(k, str(v)[:500]) for k, v in cfg.flat().items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i:i + 100])
    client.log_text(rid, cfg.to_yaml(), "config.yaml")
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, h["step"]) for h in r.history
               for k, v in finite_metrics(h).items() if k != "step"]
    metrics += [Metric(f"test_greedy/{k}", v, now, p["step"]) for p in r.curve
                for k, v in p.items() if k != "step"]
    final = {**{f"final_greedy/{k}": v for k, v in r.greedy.items()},
             **{f"final_avg_at_k/{k}": v for k, v in r.sampled.items()},
             **{k: getattr(r, k) for k in ("demos_used_unique", "demos_used_total",
                                          "demos_available",
                                  "learner_updates", "sft_steps", "wall_seconds")}}
    metrics += [Metric(k, float(v), now, cfg.train.steps) for k, v in final.items()]
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i:i + 900])
    client.set_terminated(rid, "FINISHED")
    return rid


# ------------------------------------------------------------------ finished runs on disk

FINISHED = "finished"  # <run_dir>/finished/<run>.pkl: each result as it comes in


def _material(job: "Comparison", key, cfg: dict, extra: dict) -> dict:
    """What a saved result must have been made from to stand for ``key`` now: the model,
    the questions and the rest (a digest), and the run's settings, field by field (so that
    a field a later version adds, at its default, does not void the result: ``_same``)."""
    ids = {"train": [q.id for q in job.train_qs], "test": [q.id for q in job.test_qs]}
    blob = json.dumps({"key": str(key), "model": job.model_path, "ids": ids, **extra},
                      sort_keys=True, default=str)
    return {"rest": hashlib.sha256(blob.encode()).hexdigest(), "settings": cfg}


def _same(saved, now: dict) -> bool:
    """A saved result's material against now's: the same digest, and every setting equal,
    but for a field only one side knows, which must hold its default (a field added since,
    left as it was); a default that changed shows as a different value and voids it."""
    if not isinstance(saved, dict) or saved.get("rest") != now["rest"]:
        return False
    a, b, defaults = saved["settings"], now["settings"], _settings(RunConfig())
    for k in a.keys() | b.keys():
        if k in a and k in b:
            if a[k] != b[k]:
                return False
        elif k not in defaults or defaults[k] != (a[k] if k in a else b[k]):
            return False
    return True


def _settings(cfg: RunConfig) -> dict:
    """A config's fields by their dotted names (``algo.lr``), without what no run or
    evaluation depends on: which methods and seeds the job has, how many run at once,
    which claims the report tests."""
    out = {}

    def walk(node, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = copy.deepcopy(value)
    walk(cfg, "")
    for k in ("methods", "seeds", "steps", "parallel", "claims"):
        out.pop(f"compare.{k}", None)
    return out


def _base_material(job: "Comparison") -> dict:
    cfg = _settings(job.cfg)
    cfg["name"] = ""
    return _material(job, "base", cfg, {})


def _run_material(job: "Comparison", method: str, seed: int, questions=None) -> dict:
    cc = job.cfg.compare
    return _material(job, (method, seed), _settings(job.configs[(method, seed)]), {
        "base": _base_material(job)["rest"], "eval": [cc.eval_every, cc.eval_k, cc.threads],
        "questions": None if questions is None else [q.id for q in questions]})


def save_finished(job: "Comparison", name: str, material: dict, result) -> None:
    """A finished run's (or the base model's) result, written beside and renamed: a job
    stopped later keeps it, and running it again does not repeat it."""
    folder = Path(job.out_dir) / FINISHED
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(pickle.dumps({"material": material, "result": result}))
    tmp.rename(folder / f"{name}.pkl")


def load_finished(job: "Comparison", name: str, material: dict):
    """The saved result of ``name`` when it was made from the same model, questions and
    settings (``_same``), else None."""
    f = Path(job.out_dir) / FINISHED / f"{name}.pkl"
    if not f.exists():
        return None
    saved = pickle.loads(f.read_bytes())
    return saved["result"] if _same(saved.get("material"), material) else None


@dataclass
class Comparison:
    """What the comparison job carries between its phases, and returns."""
    cfg: RunConfig
    configs: dict  # (method, seed) -> its RunConfig
    model_path: str = ""
    train_qs: list = field(default_factory=list)
    test_qs: list = field(default_factory=list)
    base: BaseEval | None = None  # the base model's evaluation (_base_task)
    results: list[RunResult] = field(default_factory=list)  # each finished run
    failed: list = field(default_factory=list)  # "method seed s" of runs that failed
    rows: list = field(default_factory=list)  # the table's rows
    gains: dict = field(default_factory=dict)
    out_dir: str = ""
    run_id: str = ""
    wall_seconds: float = 0.0


def run(cfg: RunConfig) -> Comparison:
    """Prepare the runs' configs and data, submit every run as a Ray task, wait for them
    (the matched controls start when their ReLIFT run ends), report."""

    t_start = time.time()
    job = Comparison(cfg, {(m, s): method_config(cfg, m, s)
                           for m in cfg.compare.methods for s in cfg.compare.seeds})
    out_dir = cfg.run_dir
    lock = RunLock(out_dir, "comparison")  # a second job on the same folder stops here
    job.out_dir = str(out_dir)
    try:
        return _run(job, cfg, out_dir, t_start)
    finally:
        lock.release()


def _run(job: Comparison, cfg: RunConfig, out_dir, t_start: float) -> Comparison:
    init_ray(cfg)
    console = Console.start()  # the runs' progress lines (Ray's own stay in its log files)
    prepare(job)
    tracker = Tracker(cfg.mlflow_uri, cfg.tracking.experiment, cfg.name,
                      tags={"kind": "compare"}, artifact_root=cfg.artifact_root)
    tracker.log_config(cfg)
    job.run_id = tracker.run_id
    status = "FAILED"
    try:
        wait(job, tracker, submit(job), t_start)
        report(job, tracker, out_dir)
        job.wall_seconds = time.time() - t_start
        tracker.log_metrics({"wall_seconds": job.wall_seconds})
        status = "FINISHED"
        print(f"\n[compare] {len(job.configs)} runs in {job.wall_seconds:.0f}s; tables and "
              f"compare.png in {out_dir}; MLflow parent run {tracker.run_id} in "
              f"{cfg.mlflow_uri}", flush=True)
        return job
    finally:
        tracker.end(status)
        console.stop()


def prepare(job: Comparison) -> None:
    """The base model and the questions every run shares."""
    # transformers: the Ray tasks import this module before they hide scikit-learn
    from transformers import AutoTokenizer

    cfg, cc = job.cfg, job.cfg.compare
    job.model_path = resolve_model(cfg.model.path)
    if any(method_config(cfg, m, 0).model.lora.rank for m in cc.methods):
        check_targets_of(job.model_path, cfg.model.lora.target_modules)  # before any run
    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    job.train_qs, job.test_qs, _ = load_data(cfg, tokenizer)
    print(f"[compare] {len(cc.methods)} methods x {len(cc.seeds)} seeds = {len(job.configs)} "
          f"runs of {cfg.train.steps} steps, {cc.parallel} at a time; {len(job.train_qs)} "
          f"training and {len(job.test_qs)} test questions", flush=True)


class Runs:
    """The Ray tasks of one comparison: the base model's evaluation and the runs."""

    def __init__(self, job: Comparison):

        self.job, cc = job, job.cfg.compare
        # max_retries=0: Ray would re-run a task its memory monitor killed from its first
        # step, without end; a run is deterministic, so it would die at the same step again.
        # It fails once instead, and is reported as crashed (the other runs go on).
        self.res = {"num_cpus": job.cfg.cluster.num_cpus / cc.parallel,
                    "num_gpus": 1 if job.cfg.cluster.use_gpu else 0, "max_retries": 0}
        self.train_ref, self.test_ref = ray.put(job.train_qs), ray.put(job.test_qs)
        self.pending: dict = {}  # task ref -> (method, seed)
        self.queue: list = []  # runs waiting for one of the compare.parallel slots
        self.base_running = True  # the base model's evaluation holds a slot
        self.base_point = None  # its result, once in (each run's step-0 test point)
        self.base_saved = load_finished(job, "base", _base_material(job))
        self.base_ref = None if self.base_saved is not None else \
            ray.remote(_base_task).options(name="compare-base", **self.res).remote(
                job.cfg.to_dict(), job.model_path, self.test_ref, cc.eval_k,
                cc.bucket_samples, cc.threads)
        self.questions: dict = {}  # (method, seed) -> a matched control's questions
        self.reused: list = []  # (method, seed, result) of runs a stopped job finished

    def submit(self, method: str, seed: int, questions_ref=None, questions=None) -> None:
        """Queue a run; it starts when a slot is free. The driver counts the slots: Ray
        lends a task's CPUs to others while it waits on an actor (a run's vLLM engine), so
        the CPU requests alone would let every run start at once. A run whose result a
        stopped job saved (``finished/``) is not run again: ``wait`` takes it from there."""
        self.questions[(method, seed)] = questions
        saved = load_finished(self.job, f"{method}-s{seed}",
                              _run_material(self.job, method, seed, questions))
        if saved is not None:
            self.reused.append((method, seed, saved))
            return
        self.queue.append((method, seed, questions_ref))
        self.start()

    def base_done(self, base: BaseEval) -> None:
        """The base model's evaluation is in: it frees its slot, and the runs started from
        now on take their step-0 test point from it (the same greedy pass of the same
        weights with the same generator) instead of evaluating the base model again."""
        self.base_running = False
        self.base_point = ray.put(base)
        self.start()

    def start(self) -> None:
        cc = self.job.cfg.compare
        while self.queue and len(self.pending) + self.base_running < cc.parallel:
            method, seed, questions_ref = self.queue.pop(0)
            ref = ray.remote(_run_task).options(name=f"compare-{method}-s{seed}",
                                                **self.res).remote(
                self.job.configs[(method, seed)].to_dict(), self.job.model_path,
                questions_ref or self.train_ref, self.test_ref, cc.eval_every, cc.eval_k,
                cc.threads, self.base_point)
            self.pending[ref] = (method, seed)


def submit(job: Comparison) -> Runs:
    """Every run but the matched controls (they start when relift's run of their seed ends),
    and the base model's evaluation, as Ray tasks, ``compare.parallel`` at a time."""
    runs = Runs(job)
    for m, s in job.configs:
        if m not in MATCHED:
            runs.submit(m, s)
    return runs


def wait(job: Comparison, tracker, runs: Runs, t_start: float) -> None:
    """Each run's result as it finishes, saved (``finished/``) and logged as an MLflow child
    run; a run that crashes is reported and the others kept. Results an earlier start of
    the same job saved, from the same model, questions and settings, are taken as they are."""

    if runs.base_saved is not None:
        job.base = runs.base_saved
    else:
        job.base = ray.get(runs.base_ref)
        save_finished(job, "base", _base_material(job), job.base)
    runs.base_done(job.base)
    k, answered = job.cfg.compare.eval_k, job.base.profile.get("answered")
    print(f"[compare] base model: greedy {job.base.greedy['overall']:.3f}"
          + (f", avg@{k} {job.base.sampled['overall']:.3f}" if k else "")
          + (f", readable answers {answered:.3f}" if answered is not None else "")
          + (" (saved by an earlier start)" if runs.base_ref is None else ""), flush=True)
    client = tracker.mlflow.tracking.MlflowClient(job.cfg.mlflow_uri)
    exp_id = tracker.run.info.experiment_id
    n_demos = sum(1 for q in job.train_qs if q.demo)
    while runs.pending or runs.queue or runs.reused:
        if runs.reused:  # finished by an earlier start of this job (finished/)
            m, s, r = runs.reused.pop(0)
            ref = None
        else:
            done, _ = ray.wait(list(runs.pending), num_returns=1)
            ref = done[0]
            m, s = runs.pending.pop(ref)
            runs.start()
        waiting = [c for c in MATCHED if (c, s) in job.configs] if m == "relift" else []
        if ref is not None:
            try:
                r = ray.get(ref)
            except ray.exceptions.RayError as e:  # one run's crash does not lose the others
                job.failed += [f"{x} seed {s}" for x in [m, *waiting]]
                print(f"[compare] FAILED: {m} seed {s}: {str(e).strip().splitlines()[-1]}"
                      + (f" (so {', '.join(waiting)} cannot run)" if waiting else ""),
                      flush=True)
                continue
            save_finished(job, f"{m}-s{s}",
                          _run_material(job, m, s, runs.questions.get((m, s))), r)
        for c in waiting:
            _submit_matched(job, runs, c, s, r.demos_used_ids)
        r.method = m
        if m in MATCHED:  # its share is of every training demonstration, as the others'
            r.demos_available = n_demos
        job.results.append(r)
        r.mlflow_run_id = _log_child(client, exp_id, tracker.run_id, job.configs[(m, s)], r)
        print(f"[compare] {len(job.results) + len(job.failed)}/{len(job.configs)} done: {m} "
              f"seed {s}: greedy {r.greedy['overall']:.3f}, demos "
              f"{r.demos_used_unique}, {r.wall_seconds:.0f}s "
              + ("(saved by an earlier start)" if ref is None else
                 f"({time.time() - t_start:.0f}s elapsed)"), flush=True)


def _submit_matched(job: Comparison, runs: Runs, method: str, seed: int, relift_ids) -> None:

    subset = matched_questions(method, job.train_qs, relift_ids, seed)
    if subset:
        runs.submit(method, seed, ray.put(subset), subset)
    else:
        job.failed.append(f"{method} seed {seed}")
        print(f"[compare] {method} seed {seed} not run: relift used no demonstrations in "
              f"seed {seed}", flush=True)


def report(job: Comparison, tracker, out_dir: Path) -> None:
    """The tables, claims and figures (relift_ray.jobs.compare_report), printed too."""
    if not job.results:
        raise RuntimeError(f"every run failed: {', '.join(job.failed)}")
    if job.failed:
        tracker.set_tags({"failed_runs": ", ".join(job.failed)})
    job.rows, job.gains, text = write_report(out_dir, tracker, job.base, job.results,
                                             job.failed, job.cfg.compare.methods,
                                             job.cfg.compare.eval_k, job.cfg.compare.claims)
    print("\n" + text, flush=True)
