"""The driver: builds the topology of one run and starts it.

    reward-0..k      RewardWorker actors (math-verify in child processes, hard time limits)
    generator-0..g   HFGenerator or VLLMGenerator actors (sampling copies, versioned weights)
    scheduler        SchedulerActor (records, hard buffer, RL/SFT batches)
    learner group    Ray Train TorchTrainer running learner.train_loop_per_worker
    relift-console   the job's own console lines (relift_ray.console)

Every actor is restarted by Ray when it dies (see the README's "Crashes, resume and the
console"). The learner group starts while the other actors start and the base policy is
evaluated on the test split; then it trains, the final policy is evaluated, and everything is
logged to MLflow. Re-running with the same ``name`` and ``output_dir`` resumes from the last
checkpoint and continues the same MLflow run. Called by ``jobs/train.py``; ``run(cfg)``
returns a summary dict.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from relift_ray.config import ConfigError, RunConfig

def init_ray(cfg: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.cluster.address == "local" or (cfg.cluster.address == "auto"
                                          and not _cluster_running()):
        # A local cluster of our own: no token auth (RAY_AUTH_MODE), and more logical CPUs than
        # cores so fractional actors and two learner workers all fit on a 2-core machine. One
        # node has nothing to be preempted by: Ray Train's preemption watcher (an actor polling
        # the node drain state, ~1 s of a 2-core start-up) stays off. Ray's processes inherit
        # this environment from the driver's, so the job needs no runtime_env: with one (even
        # only env_vars) the Python workers Ray starts ahead of time, which have none, cannot
        # serve its actors, and each actor waits for a worker process of its own.
        for k, v in {"RAY_AUTH_MODE": "disabled",
                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
            os.environ.setdefault(k, v)
        c = cfg.cluster
        extra = {"_metrics_export_port": c.metrics_export_port} if c.metrics_export_port else {}
        ctx = ray.init(num_cpus=c.num_cpus, include_dashboard=c.dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=c.dashboard_port,
                       log_to_driver=c.ray_logs, **extra)
    else:
        ctx = ray.init(address=cfg.cluster.address, log_to_driver=cfg.cluster.ray_logs)
    global DASHBOARD_URL
    DASHBOARD_URL = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", "") else ""


DASHBOARD_URL = ""  # the Ray dashboard of the cluster init_ray joined or started ("" = none)


def dashboard_line() -> str:
    """The console line naming the Ray dashboard and whether it answers."""
    if not DASHBOARD_URL:
        return "[driver] Ray dashboard: off (cluster.dashboard=false)"
    import urllib.request
    try:
        urllib.request.urlopen(f"{DASHBOARD_URL}/api/version", timeout=5).read()
        return f"[driver] Ray dashboard: {DASHBOARD_URL}"
    except Exception as e:
        return f"[driver] Ray dashboard: {DASHBOARD_URL} does not answer yet ({e})"


def _import_ahead() -> None:
    import importlib
    for name in ("ray.train.torch", "relift_ray.learner", "relift_ray.generators.hf",
                 "relift_ray.scheduler", "mlflow"):
        importlib.import_module(name)


def _cluster_running() -> bool:
    if os.environ.get("RAY_ADDRESS"):
        return True
    try:
        from ray._private.services import find_gcs_addresses  # read-only probe
        return bool(find_gcs_addresses())
    except Exception:
        return False


def resolve_model(cfg: RunConfig, log=print) -> str:
    """``model.path`` as a loadable model (relift_ray.registry)."""
    from relift_ray.registry import resolve_model as resolve
    return resolve(cfg.model.path, log=log)


def load_data(cfg: RunConfig, tokenizer, log=print):
    """(training questions, test questions, training questions dropped for a long prompt),
    with each prompt rendered for the model (chat template or plain, see relift_ray.data).
    The scheduler actor reads its questions through here: it must stay deterministic."""
    from relift_ray.data import prepare_tokenizer, render_prompts

    d = cfg.data
    prepare_tokenizer(tokenizer, cfg)
    train, test = read_questions(cfg)
    kept, dropped = render_prompts(train, tokenizer, d)
    if dropped:
        log(f"[data] dropped {dropped} of {len(train)} training questions whose prompt exceeds "
            f"data.max_prompt_tokens={d.max_prompt_tokens}")
    test, test_dropped = render_prompts(test, tokenizer, d)
    if test_dropped:
        log(f"[data] dropped {test_dropped} test questions whose prompt exceeds "
            f"data.max_prompt_tokens={d.max_prompt_tokens}")
    limit = d.max_test_questions
    if 0 < limit < len(test):  # evenly spaced: the mix of levels and sources is kept
        test = [test[i * len(test) // limit] for i in range(limit)]
    return kept, test, dropped


def read_questions(cfg: RunConfig) -> tuple[list, list]:
    """The training and test questions as read (no tokenizer): a bad data path or row stops
    here with a DataError naming it."""
    from relift_ray.data import load_questions

    d = cfg.data
    return (load_questions(d.train, d.format, "train", d.fields),
            load_questions(d.test, d.format, "test", d.fields))


def check_resumable(cfg: RunConfig) -> bool:
    """Whether this run resumes from checkpoints under Ray Train's storage; stops with a clear
    error, before any learner starts, when they were written by another number of learners."""
    from relift_ray.checkpoint import CheckpointWorldMismatch, check_world
    ckpts = sorted((Path(cfg.storage_path) / cfg.name).glob("checkpoint_*"))
    for ckpt in ckpts:
        try:
            check_world(ckpt, cfg.cluster.num_learners)
        except FileNotFoundError:  # an upload that did not finish: Ray Train skips it too
            continue
        except CheckpointWorldMismatch as e:
            raise ConfigError(f"cluster.num_learners={cfg.cluster.num_learners}: {e}") from None
    return bool(ckpts)


def _process_start() -> float:
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:
        return time.time()


def worker_names(cfg: RunConfig, prefix: str = "") -> tuple[list[str], list[str]]:
    """The names of the generator and reward actors ``start_workers`` makes."""
    return ([f"{prefix}generator-{i}" for i in range(cfg.cluster.num_generators)],
            [f"{prefix}reward-{i}" for i in range(cfg.cluster.num_reward_workers)])


def start_workers(cfg: RunConfig, model_path: str, prefix: str = "",
                  extraction: str = "", groups: list | None = None) -> tuple[list, list]:
    """The reward workers and generators of a job, as Ray actors named ``<prefix>reward-i``
    and ``<prefix>generator-i`` (readable in the dashboard); the reward workers read answers
    with ``extraction`` (default data.answer_extraction). vLLM engines go into the
    placement groups ``groups`` of ``relift_ray.placement.plan(cfg)`` when given."""
    import ray

    from relift_ray.generators.hf import HFGenerator
    from relift_ray.rewards import RewardWorker

    c = cfg.cluster
    # Every actor comes back: Ray restarts a dead one (max_restarts). Scoring is pure, so Ray
    # also re-runs the call that was in flight; a generator's call fails instead, and the
    # scheduler reloads the current weights into the restarted generator before it retries.
    gen_names, reward_names = worker_names(cfg, prefix)
    rewarders = [ray.remote(RewardWorker).options(name=reward_names[i],
                                                  num_cpus=c.reward_cpus, max_restarts=-1,
                                                  max_task_retries=-1)
                 .remote(extraction or cfg.data.answer_extraction, c.reward_timeout_s)
                 for i in range(c.num_reward_workers)]
    g = cfg.generator
    if g.backend == "vllm":
        from relift_ray.placement import engine_options, plan
        layout = plan(cfg) if groups else None
        generators = [_vllm_actor(cfg, model_path, gen_names[i],
                                  engine_options(layout, groups, i) if layout else None)
                      for i in range(c.num_generators)]
    else:
        generators = [ray.remote(HFGenerator).options(
            name=gen_names[i], num_cpus=c.generator_cpus,
            num_gpus=1 if c.use_gpu else 0, max_restarts=-1)
            .remote(model_path, device="cuda" if c.use_gpu else "cpu", dtype=cfg.model.dtype,
                    threads=c.generator_threads or c.torch_threads,
                    eos_token=cfg.model.eos_token)
            for i in range(c.num_generators)]
    return rewarders, generators


def check_model_len(max_model_len: int, model_path: str, need: int = 0,
                    need_what: str = "") -> None:
    """Refuse, in one line before Ray starts, a ``generator.max_model_len`` beyond the model's
    own limit (vLLM refuses it inside each engine actor's start-up traceback), and a context
    that cannot hold ``need`` tokens (``need_what`` names the settings that add up to it):
    vLLM would cut every longer prompt-plus-response short without an error."""
    import json

    config = Path(model_path) / "config.json"
    limit = (json.loads(config.read_text()).get("max_position_embeddings")
             if config.is_file() else None)
    if max_model_len and limit and max_model_len > limit:
        raise ConfigError(f"generator.max_model_len={max_model_len} is more than the model's "
                          f"max_position_embeddings={limit} ({config}); set it to at most "
                          f"{limit}, or 0 for the model's own limit")
    context = max_model_len or limit
    if need and context and need > context:
        where = (f"generator.max_model_len={max_model_len}" if max_model_len
                 else f"the model's max_position_embeddings={limit} ({config})")
        raise ConfigError(f"{where} holds fewer tokens than {need_what} = {need}: longer "
                          f"prompts and responses would be cut short; raise "
                          f"generator.max_model_len (up to the model's {limit or 'limit'}) "
                          f"or lower those settings")


# GPU share of a colocated generator (the learner worker on the same GPU takes the rest)
COLOCATED_GENERATOR_GPU = 0.4


def _vllm_actor(cfg: RunConfig, model_path: str, name: str, placed: dict | None = None):
    """One vLLM engine as a Ray actor. Tensor parallel engines (tensor_parallel_size > 1) take
    no GPU themselves: vLLM places its workers with Ray in a placement group of that size.
    ``placed``: the actor options putting it in its placement-group bundle (the job's
    layout, relift_ray.placement); without them (the evaluation job) Ray places it."""
    import ray

    from relift_ray.generators.vllm_gen import VLLMGenerator

    g, c = cfg.generator, cfg.cluster
    tp = g.tensor_parallel_size
    gpus = COLOCATED_GENERATOR_GPU if g.colocate else (1 if tp == 1 else 0)
    options = {"num_gpus": gpus, **(placed or {})}
    return ray.remote(VLLMGenerator).options(
        name=name, num_cpus=c.generator_cpus, max_restarts=-1, **options).remote(
        model_path, tensor_parallel_size=tp, dtype=cfg.model.dtype,
        gpu_memory_utilization=g.gpu_memory_utilization, max_model_len=g.max_model_len,
        eos_token=cfg.model.eos_token, seed=cfg.train.seed, enable_sleep_mode=g.colocate,
        weight_transfer="nccl" if g.weight_sync == "nccl" else "ipc",
        enforce_eager=g.enforce_eager, bucket_mb=g.bucket_mb,
        **({"distributed_executor_backend": "ray"} if tp > 1 else {}))


def learner_resources(cfg: RunConfig, pinned: bool = False) -> dict:
    """Each learner worker's Ray resources: a whole GPU, or what a colocated generator leaves;
    CPUs only when ``pinned`` (the colocated layout: the learner takes its engine's GPU,
    reserved in the engines' placement group, relift_ray.placement)."""
    res = {"CPU": cfg.cluster.learner_cpus}
    if cfg.cluster.use_gpu and not pinned:
        res["GPU"] = 1 - COLOCATED_GENERATOR_GPU if cfg.generator.colocate else 1
    return res


def run(cfg: RunConfig) -> dict:
    import ray

    from relift_ray.imports import skip_unused_modules
    from relift_ray.weight_sync import Background

    t_start = _process_start()  # the job's start as a user sees it: imports included
    skip_unused_modules()
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    model_path = resolve_model(cfg)  # a bad model.path stops here, before Ray starts
    if cfg.generator.backend == "vllm":
        check_model_len(cfg.generator.max_model_len, model_path,
                        cfg.data.max_prompt_tokens + cfg.algo.max_new_tokens,
                        f"data.max_prompt_tokens + algo.max_new_tokens "
                        f"({cfg.data.max_prompt_tokens} + {cfg.algo.max_new_tokens})")
    read_questions(cfg)  # so do a bad data path and a bad row (the scheduler renders them)
    # The learner group is the longest chain to step 1 (Ray Train's controller, its worker
    # processes, imports, DeepSpeed): it starts as soon as Ray and the actors it talks to
    # exist, before anything else the driver does.
    phases = {}
    # What the driver imports next (torch, Ray Train, the actors' classes, MLflow: ~3 s of
    # CPU) is imported meanwhile in a thread: ray.init mostly waits for Ray's processes.
    warm = Background(_import_ahead, "relift-imports")
    init_ray(cfg)
    warm.result()
    from relift_ray.console import Console, say
    console = Console.start()
    # said once the dashboard answers (or fails to, 5 s): nothing waits for it
    Background(lambda: say(dashboard_line()), "relift-dashboard-probe")
    phases["python+ray"] = time.time() - t_start
    c = cfg.cluster
    run_dir = Path(cfg.output_dir) / cfg.name
    status, actors, tracker = "FAILED", [], None
    try:
        # vLLM engines: their GPUs reserved first, in placement groups (relift_ray.placement)
        from relift_ray.placement import create_groups, plan
        layout = plan(cfg)
        groups = create_groups(layout, cfg.name) if layout else []
        # Actors: plain classes made remote here, each with a readable name in the dashboard.
        rewarders, generators = start_workers(cfg, model_path, groups=groups)
        engines = None
        if layout and layout.kind == "colocated":  # each learner goes to its engine's GPU
            engines = [tuple(p) for p in ray.get([g.placement.remote() for g in generators])]
            say("[driver] colocated engines (node, GPU): "
                + ", ".join(f"{n[:8]}:{gpu}" for n, gpu in engines))
        # The scheduler reads its questions itself, so Ray can restart it from its small
        # constructor arguments alone; the learner group's restart from its last checkpoint
        # (the learners' calls fail when the scheduler dies) then loads that checkpoint's state.
        from relift_ray.scheduler import SchedulerActor
        scheduler = ray.remote(SchedulerActor).options(
            name="scheduler", num_cpus=c.scheduler_cpus, max_concurrency=c.num_learners + 4,
            max_restarts=-1).remote(cfg.to_dict(), model_path, *worker_names(cfg))
        actors = [*rewarders, *generators, scheduler]

        # The learner group starts (processes, imports, DeepSpeed) while the driver opens the
        # MLflow run and the actors start; rank 0 finds the run id in Ray's key-value store
        # once the driver has it. With tracking.eval_before=start the base model is evaluated
        # meanwhile: the first step queues behind that evaluation on the generators, which
        # hold the base weights, version 0, until the learners publish. A resumed run
        # publishes its checkpoint's weights at once, so it evaluates first unless that
        # evaluation is already logged; so do vLLM engines, whose weight updates (and,
        # colocated, GPU memory) must not interleave with the evaluation.
        from relift_ray.tracking import Tracker, run_id_key, share_run_id, write_csv
        resuming = check_resumable(cfg)
        key = run_id_key(cfg.name)
        trainer = _trainer(cfg, model_path, scheduler, generators, key, t_start, engines)
        hf = cfg.generator.backend == "transformers"
        eval_first = cfg.tracking.eval_before == "start"
        early = not eval_first or (hf and not resuming)
        fitting = Background(trainer.fit, "ray-train-fit") if early else None
        phases["learners started"] = time.time() - t_start - sum(phases.values())

        run_id_file = run_dir / "mlflow_run_id"
        resumed_id = run_id_file.read_text().strip() if run_id_file.exists() else None
        tracker = Tracker(cfg.mlflow_uri, cfg.tracking.experiment, cfg.name,
                          tags={"mode": cfg.algo.mode}, artifact_root=cfg.artifact_root,
                          run_id=resumed_id)
        share_run_id(key, tracker.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id_file.write_text(tracker.run_id)
        before = tracker.logged("test_before/") if tracker.resumed else {}
        if fitting is None and hf and before:
            fitting = Background(trainer.fit, "ray-train-fit")
        phases["mlflow"] = time.time() - t_start - sum(phases.values())

        # The scheduler renders the prompts (tokenizer, template, length limit) for both.
        data = ray.get(scheduler.data_info.remote())
        test_qs = data["test"]
        cfg.train.steps = data["steps"]  # train.epochs: from the training questions kept
        if data["dropped"]:
            say(f"[data] dropped {data['dropped']} of {data['train'] + data['dropped']} "
                f"training questions whose prompt exceeds "
                f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}")
        say(f"[driver] run {cfg.name!r}: mode {cfg.algo.mode}, {data['train']} training "
            f"questions, {len(test_qs)} test questions, {cfg.train.steps} steps"
            + (f" ({cfg.train.epochs} epochs)" if cfg.train.epochs else "")
            + f", model {model_path}"
            + (f"; continuing MLflow run {tracker.run_id}" if tracker.resumed else ""))
        tracker.log_config(cfg)
        tracker.set_tags({"mlflow.note.content": describe(cfg, data, model_path)})
        tracker.log_metrics({"data_dropped_long_prompts": data["dropped"],
                             "train_questions": data["train"]})
        phases["data"] = time.time() - t_start - sum(phases.values())
        ray.get([a.__ray_ready__.remote() for a in actors])
        phases["actors"] = time.time() - t_start - sum(phases.values())
        eval_tokens = cfg.algo.max_new_tokens
        from relift_ray.evaluation import evaluate
        def evaluate_base() -> dict:
            acc = evaluate(generators, rewarders, test_qs, max_new_tokens=eval_tokens)
            tracker.log_metrics({f"test_before/{k}": v for k, v in acc.items()}, step=0)
            say(f"[driver] test accuracy before training: {_fmt(acc)}")
            return acc

        if not before and eval_first:
            before = evaluate_base()
            phases["evaluation"] = time.time() - t_start - sum(phases.values())
        say(f"[driver] actors{' and base evaluation' if eval_first else ''} ready "
            f"{time.time() - t_start:.1f}s after the start: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
        result = (fitting or Background(trainer.fit, "ray-train-fit")).result()

        after = evaluate(generators, rewarders, test_qs, max_new_tokens=eval_tokens)
        tracker.log_metrics({f"test_after/{k}": v for k, v in after.items()},
                            step=cfg.train.steps)
        if not before and cfg.tracking.eval_before == "end":
            ray.get([g.load_base.remote() for g in generators])
            before = evaluate_base()
        events = ray.get(scheduler.get_timeline.remote())
        tracker.log_timeline(events)
        if cfg.algo.max_staleness:
            from relift_ray.timeline import overlap_seconds
            say(f"[driver] generation overlapped learning for {overlap_seconds(events):.1f} s "
                f"(algo.max_staleness={cfg.algo.max_staleness}; timeline.png in MLflow)")
        rows = ray.get(scheduler.question_rows.remote())
        table_path = run_dir / "questions.csv"
        write_csv(rows, table_path)
        tracker.log_table(rows, "questions.csv")
        moves = tracker.log_questions(rows, run_dir, cfg.name)  # questions.png beside it
        tracker.log_metrics({"hardest_left": sum(moves["hardest_left"].values()),
                             "hardest_left_after_sft":
                                 sum(moves["hardest_left_after_sft"].values())})
        final = ray.get(scheduler.state_dict.remote())
        val = final.get("validation") or {}
        reward_stats = ray.get([r.get_stats.remote() for r in rewarders])
        ckpt_path = result.checkpoint.path if result.checkpoint else ""
        tracker.set_tags({"final_checkpoint": ckpt_path,
                          "final_policy": str(Path(ckpt_path) / "policy") if ckpt_path else ""})
        summary = {"run_id": tracker.run_id, "before": before, "after": after,
                   "sft_steps": final["counters"]["sft_steps"],
                   "demos_used_unique": len(final["demos_used"]),
                   "demos_used_total": final["counters"]["demos_used_total"],
                   "demos_available": data["demos"],
                   "reward_timeouts": sum(s["timeouts"] for s in reward_stats),
                   "checkpoint": ckpt_path, "question_table": str(table_path),
                   "wall_seconds": time.time() - t_start}
        if val.get("best"):  # validation while training (tracking.eval_every)
            from relift_ray.learner import BEST_DIR
            best_policy = run_dir / BEST_DIR / "policy"
            summary.update({"val_best_score": val["best"]["score"],
                            "val_best_step": val["best"]["step"],
                            "val_last_score": val["last"]["score"],
                            "val_last_step": val["last"]["step"],
                            "best_policy": str(best_policy)})
            tracker.set_tags({"best_step": val["best"]["step"], "best_policy": str(best_policy),
                              "best_val_score": f"{val['best']['score']:.4f}"})
        if cfg.tracking.register_model and ckpt_path:
            policies = {"final": Path(ckpt_path) / "policy"}
            if summary.get("best_policy"):
                policies["best"] = Path(summary["best_policy"])
            for alias, folder in policies.items():
                uri = tracker.log_policy(folder, f"{alias}_policy", cfg.name, alias,
                                         cfg.algo.max_new_tokens)
                summary[f"mlflow_model_{alias}"] = uri
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        status = "FINISHED"
        console.stop()
        print_summary(cfg, summary)
        return summary
    finally:
        if tracker is not None:
            tracker.end(status)
        for a in actors:  # names are free again for the next run in this Ray session
            ray.kill(a)
        if "groups" in locals():
            from ray.util.placement_group import remove_placement_group
            for pg in groups:
                remove_placement_group(pg)
        console.stop()


def _trainer(cfg: RunConfig, model_path: str, scheduler, generators, mlflow_run_key: str,
             job_start: float, engines: list | None = None):
    """The learner group: a Ray Train TorchTrainer running ``train_loop_per_worker``; its run
    name and storage make a re-run resume from the last checkpoint. ``engines``: the
    colocated engines' (node, GPU): each worker is sent to one's node and takes its GPU."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    from relift_ray.learner import train_loop_per_worker
    from relift_ray.placement import learner_label_selectors
    from relift_ray.process_group import LearnerTorchConfig

    c = cfg.cluster
    placed = {}
    if engines:  # Ray's GPUs are the engines' bundles: the learners ask for CPUs only
        placed = {"label_selector": learner_label_selectors(engines)}

    class LearnerTrainer(TorchTrainer):
        """Ray Train's TorchTrainer without its Ray Data callback: the learners read no Ray
        Dataset (the scheduler hands them their batches), and that callback starts one more
        actor (DatasetManager, ~1 s of CPU) and a round trip to every worker as the group
        starts, on the way to step 1. (Ray Train 2.60's own hook; ray is pinned.)"""

        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if type(cb).__name__ != "DatasetsCallback"]

    return LearnerTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "model_path": model_path,
                           # Ray Train's controller unpickles this config: actor handles
                           # in it would make it load their classes' modules (torch and
                           # transformers, seconds of CPU on the way to step 1), so they go
                           # through the object store, fetched by the workers
                           "actors": ray.put((scheduler, generators)),
                           "mlflow_uri": cfg.mlflow_uri, "mlflow_run_key": mlflow_run_key,
                           "job_start": job_start, "engines": engines},
        # Ray Train's TorchConfig would have its controller import torch (~1 s of CPU on the
        # way to step 1): the same process group from a module without torch
        torch_config=LearnerTorchConfig(backend="nccl" if engines else None),
        scaling_config=ScalingConfig(num_workers=c.num_learners,
                                     use_gpu=c.use_gpu and not engines,
                                     resources_per_worker=learner_resources(cfg, bool(engines)),
                                     **placed),
        run_config=TrainRunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2)))


def describe(cfg: RunConfig, data: dict, model_path: str) -> str:
    """The MLflow run's description: what was run, in one line."""
    a, c = cfg.algo, cfg.cluster
    return (f"{a.mode} on {cfg.data.train} ({data['train']} questions, test {cfg.data.test}): "
            f"{cfg.train.steps} steps of {a.batch_size} questions x {a.n_samples} rollouts, "
            f"model {cfg.model.path} ({model_path}), {c.num_learners} learner(s), "
            f"{c.num_generators} {cfg.generator.backend} generator(s)")


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in acc.items())


def print_summary(cfg: RunConfig, s: dict) -> None:
    levels = [k for k in s["after"] if k != "overall"] + ["overall"]
    print("\n" + "=" * 60)
    print(f"run {cfg.name} ({cfg.algo.mode}) finished in {s['wall_seconds']:.0f}s")
    print(f"{'test accuracy':<16}{'before':>10}{'after':>10}")
    for k in levels:
        b = s["before"].get(k)
        print(f"{k:<16}{'-' if b is None else f'{b:.3f}':>10}{s['after'][k]:>10.3f}")
    print(f"SFT steps: {s['sft_steps']}; demonstrations used: {s['demos_used_unique']} unique, "
          f"{s['demos_used_total']} total, of {s['demos_available']} available")
    if "val_best_score" in s:
        print(f"validation (every {cfg.tracking.eval_every} steps, temperature "
              f"{cfg.tracking.val_temperature:g}): best {s['val_best_score']:.3f} at step "
              f"{s['val_best_step']}, last {s['val_last_score']:.3f} at step "
              f"{s['val_last_step']}")
        print(f"best policy: {s['best_policy']}")
    print(f"checkpoint: {s['checkpoint']}")
    if s.get("mlflow_model_final"):
        print("MLflow model: " + ", ".join(s[k] for k in ("mlflow_model_final",
                                                          "mlflow_model_best") if k in s))
    print(f"question table: {s['question_table']}")
    print(f"MLflow run {s['run_id']} in {cfg.mlflow_uri}")
    print("=" * 60, flush=True)
