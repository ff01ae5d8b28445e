"""The topology of one run: which actors exist, where they run, and the learner group.

    reward-0..k      RewardWorker actors (math-verify in child processes, hard time limits)
    generator-0..g   HFGenerator or VLLMGenerator actors (sampling copies, versioned weights)
    scheduler        SchedulerActor (records, hard buffer, RL/SFT batches)
    learner group    Ray Train TorchTrainer running relift_ray.learner.loop

``start(cfg, model_path)`` creates the actors (vLLM engines first into their placement
groups, relift_ray.rollout.placement) and returns them as a ``Topology``; ``learner_group``
builds the Ray Train trainer; ``Topology.stop`` frees the names and GPUs. Every actor is
restarted by Ray when it dies; the learner group restarts from its last checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.placement_group import remove_placement_group

from relift_ray.config import RunConfig
from relift_ray.errors import ConfigError
from relift_ray.records import LoopSpec
from relift_ray.rollout.placement import (
    create_groups,
    engine_options,
    learner_label_selectors,
    plan,
)
from relift_ray.rollout.rewards import RewardWorker, worker_args
from relift_ray.rollout.vllm_engine import VLLMGenerator


def check_resumable(cfg: RunConfig, model_path: str = "") -> bool:
    """Whether this run resumes from checkpoints under Ray Train's storage; stops with a clear
    error, before any learner starts, when they were written by another number of learners,
    or by a LoRA run for a full one (or with other adapters, or the other way round)."""
    # torch: the training job imports it in the background while Ray starts
    from relift_ray.learner.checkpoint import CheckpointWorldMismatch, check_lora, check_world
    ckpts = sorted((Path(cfg.storage_path) / cfg.name).glob("checkpoint_*"))
    for ckpt in ckpts:
        try:
            check_world(ckpt, cfg.cluster.num_learners)
        except FileNotFoundError:  # an upload that did not finish: Ray Train skips it too
            continue
        except CheckpointWorldMismatch as e:
            raise ConfigError(f"cluster.num_learners={cfg.cluster.num_learners}: {e}") from None
        try:
            check_lora(ckpt, cfg, model_path)
        except ValueError as e:
            raise ConfigError(f"model.lora: {e}") from None
    return bool(ckpts)


def newest_checkpoint_step(cfg: RunConfig) -> int:
    """The step of the newest complete checkpoint under Ray Train's storage (0: none)."""
    # torch: the training job imports it in the background while Ray starts
    from relift_ray.learner.checkpoint import checkpoint_problem
    steps = [0]
    for ckpt in (Path(cfg.storage_path) / cfg.name).glob("checkpoint_*"):
        meta = ckpt / "meta.json"
        if meta.is_file() and not checkpoint_problem(ckpt, cfg.cluster.num_learners):
            steps.append(int(json.loads(meta.read_text())["step"]))
    return max(steps)


def worker_names(cfg: RunConfig, prefix: str = "") -> tuple[list[str], list[str]]:
    """The names of the generator and reward actors ``start_workers`` makes."""
    return ([f"{prefix}generator-{i}" for i in range(cfg.cluster.num_generators)],
            [f"{prefix}reward-{i}" for i in range(cfg.cluster.num_reward_workers)])


def start_workers(cfg: RunConfig, model_path: str, prefix: str = "",
                  extraction: str = "", groups: list | None = None) -> tuple[list, list]:
    """The reward workers and generators of a job, as Ray actors named ``<prefix>reward-i``
    and ``<prefix>generator-i`` (readable in the dashboard); the reward workers read answers
    with ``extraction`` (default data.answer_extraction). vLLM engines go into the
    placement groups ``groups`` of ``relift_ray.rollout.placement.plan(cfg)`` when given."""

    # torch: the training job imports it in the background while Ray starts
    from relift_ray.rollout.hf import HFGenerator

    c = cfg.cluster
    # Every actor comes back: Ray restarts a dead one (max_restarts). Scoring is pure, so Ray
    # also re-runs the call that was in flight; a generator's call fails instead, and the
    # scheduler reloads the current weights into the restarted generator before it retries.
    gen_names, reward_names = worker_names(cfg, prefix)
    rewarders = [ray.remote(RewardWorker).options(name=reward_names[i],
                                                  num_cpus=c.reward_cpus, max_restarts=-1,
                                                  max_task_retries=-1)
                 .remote(*worker_args(cfg, extraction))
                 for i in range(c.num_reward_workers)]
    g = cfg.generator
    if g.backend == "vllm":
        layout = plan(cfg) if groups else None
        generators = [vllm_actor(cfg, model_path, gen_names[i],
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


def vllm_actor(cfg: RunConfig, model_path: str, name: str, placed: dict | None = None,
               num_cpus: float | None = None, threads: int = 0):
    """One vLLM engine as a Ray actor. Tensor parallel engines (tensor_parallel_size > 1) take
    no GPU themselves: vLLM places its workers with Ray in a placement group of that size.
    ``placed``: the actor options putting it in its placement-group bundle (the job's
    layout, relift_ray.rollout.placement); without them (the evaluation job) Ray places it.
    ``num_cpus`` (default cluster.generator_cpus) and ``threads`` (default
    cluster.generator_threads or torch_threads): a comparison run's engine lives within the
    CPUs of the run's task (relift_ray.jobs.in_process)."""

    g, c = cfg.generator, cfg.cluster
    tp = g.tensor_parallel_size
    gpus = 0 if not c.use_gpu else (
        COLOCATED_GENERATOR_GPU if g.colocate else (1 if tp == 1 else 0))
    options = {"num_gpus": gpus, **(placed or {})}
    return ray.remote(VLLMGenerator).options(
        name=name, num_cpus=c.generator_cpus if num_cpus is None else num_cpus,
        max_restarts=-1, **options).remote(
        model_path, tensor_parallel_size=tp, dtype=g.dtype or cfg.model.dtype,
        gpu_memory_utilization=g.gpu_memory_utilization, max_model_len=g.max_model_len,
        eos_token=cfg.model.eos_token, seed=cfg.train.seed, enable_sleep_mode=g.colocate,
        weight_transfer="nccl" if g.weight_sync == "nccl" else "auto",
        device="cuda" if c.use_gpu else "cpu", kv_cache_gib=g.cpu_kv_cache_gib,
        threads=0 if c.use_gpu else (threads or c.generator_threads or c.torch_threads),
        enforce_eager=g.enforce_eager, bucket_mb=g.bucket_mb,
        lora_rank=cfg.model.lora.rank if cfg.model.lora.sync == "adapter" else 0,
        **({"distributed_executor_backend": "ray"} if tp > 1 else {}))


def learner_resources(cfg: RunConfig, pinned: bool = False) -> dict:
    """Each learner worker's Ray resources: a whole GPU, or what a colocated generator leaves;
    CPUs only when ``pinned`` (the colocated layout: the learner takes its engine's GPU,
    reserved in the engines' placement group, relift_ray.rollout.placement)."""
    res = {"CPU": cfg.cluster.learner_cpus}
    if cfg.cluster.use_gpu and not pinned:
        res["GPU"] = 1 - COLOCATED_GENERATOR_GPU if cfg.generator.colocate else 1
    return res


def learner_group(cfg: RunConfig, model_path: str, topo: "Topology", mlflow_run_key: str,
                  job_start: float):
    """The learner group: a Ray Train TorchTrainer running ``train_loop_per_worker``; its run
    name and storage make a re-run resume from the last checkpoint. Colocated engines
    (``topo.engines``, each one's node and GPU): each worker is sent to one's node and takes
    its GPU."""
    # Ray Train (~0.5 s of imports) and torch: only a training job's driver starts a learner
    # group, and it imports them in the background while Ray starts (jobs.train)
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig

    from relift_ray.learner.loop import train_loop_per_worker
    from relift_ray.learner.process_group import LearnerTorchConfig

    c, engines = cfg.cluster, topo.engines
    placed = {}
    if engines:  # Ray's GPUs are the engines' bundles: the learners ask for CPUs only
        placed = {"label_selector": learner_label_selectors(engines)}
    # Ray Train's controller unpickles train_loop_config: actor handles in it would make it
    # load their classes' modules (torch and transformers, seconds of CPU on the way to step
    # 1), so they go through the object store, fetched by the workers
    spec = LoopSpec(cfg=cfg.to_dict(), model_path=model_path,
                    actors=ray.put((topo.scheduler, topo.generators)),
                    mlflow_uri=cfg.mlflow_uri, mlflow_run_key=mlflow_run_key,
                    job_start=job_start, engines=tuple(engines))
    return _trainer_class()(
        train_loop_per_worker, train_loop_config={"spec": spec},
        # Ray Train's TorchConfig would have its controller import torch (~1 s of CPU on the
        # way to step 1): the same process group from a module without torch
        torch_config=LearnerTorchConfig(backend="nccl" if engines else None,
                                        timeout_s=collective_timeout_s(cfg)),
        scaling_config=ScalingConfig(num_workers=c.num_learners,
                                     use_gpu=c.use_gpu and not engines,
                                     resources_per_worker=learner_resources(cfg, bool(engines)),
                                     **placed),
        run_config=TrainRunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2)))


def collective_timeout_s(cfg: RunConfig) -> int:
    """How long a learner rank waits in a collective for the others: as long as rank 0 may
    wait on the scheduler (a batch, a validation, the generators' weight loads) and a minute,
    so that the ranks above 0 give up on the same deadline as rank 0, not before it."""
    c = cfg.cluster
    return int(max(c.batch_deadline_s, c.validate_deadline_s,
                   cfg.generator.sync_timeout_s) + 60)


def _trainer_class():
    """Ray Train's TorchTrainer without its Ray Data callback: the learners read no Ray
    Dataset (the scheduler hands them their batches), and that callback starts one more actor
    (DatasetManager, ~1 s of CPU) and a round trip to every worker as the group starts, on the
    way to step 1. (Ray Train 2.60's own hook; ray is pinned.) Made here, not at import:
    ray.train.torch imports torch, which the modules importing this one may not need."""
    # Ray Train's torch trainer imports torch: see learner_group
    from ray.train.torch import TorchTrainer

    class LearnerTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if type(cb).__name__ != "DatasetsCallback"]

    return LearnerTrainer


@dataclass
class Topology:
    """The actors of one run, as ``start`` made them."""
    rewarders: list
    generators: list
    scheduler: object
    groups: list = field(default_factory=list)  # vLLM engines' placement groups
    engines: list = field(default_factory=list)  # colocated engines' (node, GPU)

    @property
    def actors(self) -> list:
        return [*self.rewarders, *self.generators, self.scheduler]

    def stop(self) -> None:
        """Kill the actors (their names are free again in this Ray session) and free the
        engines' GPUs."""
        for a in self.actors:
            ray.kill(a)
        for pg in self.groups:
            remove_placement_group(pg)


def start(cfg: RunConfig, model_path: str, say=print) -> Topology:
    """The run's actors: vLLM engines' GPUs reserved first (placement groups), the reward
    workers and generators, then the scheduler. Plain classes made remote here, each with a
    readable name in the dashboard."""

    # torch: the training job imports it in the background while Ray starts
    from relift_ray.scheduler.actor import SchedulerActor

    c = cfg.cluster
    layout = plan(cfg)
    groups = create_groups(layout, cfg.name) if layout else []
    rewarders, generators = start_workers(cfg, model_path, groups=groups)
    engines = []
    if layout and layout.kind == "colocated":  # each learner goes to its engine's GPU
        engines = [tuple(p) for p in ray.get([g.placement.remote() for g in generators])]
        say("[driver] colocated engines (node, GPU): "
            + ", ".join(f"{n[:8]}:{gpu}" for n, gpu in engines))
    # The scheduler reads its questions itself, so Ray can restart it from its small
    # constructor arguments alone; the learner group's restart from its last checkpoint (the
    # learners' calls fail when the scheduler dies) then loads that checkpoint's state.
    scheduler = ray.remote(SchedulerActor).options(
        name="scheduler", num_cpus=c.scheduler_cpus, max_concurrency=c.num_learners + 4,
        max_restarts=-1).remote(cfg.to_dict(), model_path, *worker_names(cfg))
    return Topology(rewarders, generators, scheduler, groups, engines)
