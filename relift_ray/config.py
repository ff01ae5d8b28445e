"""The one config tree of a relift_ray run.

Every field is documented once, here, where it is declared. A run's config comes from a YAML
file (``jobs/configs/*.yaml``) plus dotted command-line overrides (``algo.batch_size=32``); a
YAML file may name a ``preset`` (``paper`` or ``toy``) whose values it then overrides.
``validate`` raises ``ConfigError`` naming the field at fault and why; nothing is rewritten
silently. Imports no Ray.

    cfg = load_config("jobs/configs/toy_relift.yaml", ["train.steps=10"])
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message names the dotted field."""


@dataclass
class ModelConfig:
    # a named model (toy, smollm2-135m), an HF folder, a checkpoint or run folder, a hub id, or
    # py:module:function returning a folder (relift_ray.registry)
    path: str = "toy"
    dtype: str = "float32"  # float32 | bfloat16 (bf16 needs a GPU to be fast)
    eos_token: str = ""  # override the tokenizer's EOS token ("" = tokenizer's own)


@dataclass
class DataConfig:
    # a named source ("toy"), py:module:function, a data file (.jsonl/.json/.parquet) or
    # hf://owner/name[/glob]
    train: str = "toy"
    format: str = "auto"  # auto | jsonl | gsm8k | math | luffy (= parquet); see relift_ray.data
    test: str = "toy"  # held-out evaluation split ("toy" = the toy task's test split)
    max_prompt_tokens: int = 1024  # longer prompts (after the template) are dropped and counted
    max_test_questions: int = 0  # >0: evaluate on an evenly spaced subset of this size
    # what the verifier sees: whole | after_think (the released reward) | think_or_whole (the
    # released evaluation) | boxed; see relift_ray.rewards.extract_answer
    answer_extraction: str = "boxed"
    # Prompting: auto = the tokenizer's chat template when it has one, else the plain template.
    prompt_template: str = "auto"  # auto | chat | plain
    plain_template: str = "{prompt}"  # plain: the text around the question
    system_prompt: str = ""  # "" / none, luffy (the LUFFY/ReLIFT <think> prompt), or the text itself
    chat_template: str = ""  # a .jinja file (or Jinja text) replacing the tokenizer's template
    strip_think_prefix: bool = True  # drop a demo's leading "<think>\n" when the prompt ends with it
    # Field names of the plain jsonl format.
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    demo_field: str = "demo"
    id_field: str = "id"

    @property
    def fields(self):
        from relift_ray.data import Fields
        return Fields(self.prompt_field, self.answer_field, self.demo_field, self.id_field)


@dataclass
class AlgoConfig:
    # relift | rl (no buffer, no SFT) | sft (offline SFT on all demos) | sft_then_rl (offline SFT
    # for sft_first_steps steps, then RL) | mixed (RL loss + mixed_sft_coef * SFT loss each step)
    mode: str = "relift"
    batch_size: int = 128  # B: questions per RL step
    n_samples: int = 8  # N: rollouts per question
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192  # also L_max, the divisor of the RL loss
    rl_loss: str = "relift"  # relift (r - mean, no clip, sum/L_max) | grpo (clipped, std-normalised)
    clip_eps: float = 0.2  # grpo only: ratio clip range
    entropy_coef: float = 0.001  # RL entropy bonus coefficient
    # How the entropy bonus is aggregated: minibatch (the paper's formula: one token mean over
    # a rank's minibatch) | released (the released code: a token mean per dynamic micro-batch
    # of at most entropy_token_budget tokens, summed, so the bonus counts once per
    # micro-batch; see relift_ray.algo)
    entropy_agg: str = "minibatch"
    entropy_token_budget: int = 32768  # released: ppo_max_token_len_per_gpu
    minibatches: int = 2  # optimizer steps per RL batch
    lr: float = 1e-6  # RL optimizer (AdamW) learning rate
    weight_decay: float = 0.01  # both optimizers
    grad_clip: float = 0.7  # RL gradient-norm clip
    buffer_size: int = 128  # M: demonstrations that trigger one SFT step
    sft_lr: float = 1e-6  # SFT optimizer (a second AdamW over the same weights)
    sft_entropy_coef: float = 0.001  # alpha: 1e-3 in the released scripts, 1e-4 in the paper
    sft_grad_clip: float = 1.0
    # How the SFT loss is aggregated: token_mean (the paper's: the token mean over the SFT
    # batch's demonstrations) | released (the released code: token means of micro-batches of
    # sft_micro_batch_size rows, each divided by the batch's number of micro-batches)
    sft_agg: str = "token_mean"
    sft_micro_batch_size: int = 4  # released: sft_micro_batch_size of the 7B scripts
    sft_batch_size: int = 128  # mode=sft / sft_then_rl: demonstrations per offline SFT step
    # The paper's ablations (mode=relift): when an SFT step runs, and what feeds the buffer.
    sft_trigger: str = "buffer_full"  # buffer_full (M waiting) | every_k | every_step
    sft_every: int = 10  # sft_trigger=every_k: SFT on (up to M of) the buffer every k steps
    buffer_feed: str = "hardest"  # hardest (pass rate 0) | non_hardest (pass rate > 0)
    sft_first_steps: int = 0  # mode=sft_then_rl: offline SFT steps before RL starts
    mixed_sft_coef: float = 1.0  # mode=mixed: weight of the SFT term added to the RL loss
    # Asynchronous rollouts: batch s is sampled with weight version max(0, s-1-k) while the
    # learners train the steps before it (0 = exactly on-policy, the released algorithm). A
    # fixed lag, so a run is as deterministic (and resumable) as an on-policy one.
    max_staleness: int = 0
    # Sampler/learner mismatch (vLLM's kernels, or stale weights with max_staleness > 0): each
    # token's policy-gradient term is weighted by w = pi_learner / pi_sampler: tis uses
    # min(w, is_cap) (truncated IS), clip uses w clipped into [1/is_cap, is_cap].
    is_correction: str = "none"  # none | tis | clip
    is_cap: float = 2.0


@dataclass
class TrainConfig:
    steps: int = 100  # learner steps (RL steps; SFT steps in mode=sft)
    # > 0: train this many passes over the training questions instead of train.steps, in
    # whole batches (a pass's remainder smaller than algo.batch_size is dropped, as the
    # released code's data loader does); the steps follow from the data
    epochs: int = 0
    seed: int = 1
    checkpoint_every: int = 10  # steps between checkpoints (the last step always checkpoints)
    zero_stage: int = 2  # DeepSpeed ZeRO stage
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences)
    # Memory of the update at long lengths and large vocabularies: a rank's minibatch goes
    # through the model in micro-batches of at most this many (padded) tokens, gradients
    # accumulated, the loss normalised as over the whole minibatch (0 = one pass)
    max_tokens_per_microbatch: int = 0
    # log-probs and entropy from the hidden states in chunks of this many positions x rows,
    # each chunk's logits recomputed in backward: no [tokens x vocabulary] fp32 tensor larger
    # than one chunk exists (0 = the whole forward's logits at once)
    logits_chunk_tokens: int = 0
    # padding-free: a micro-batch's rows go through the model as one sequence without padding
    # (positions restart per row; transformers keeps the rows apart), and the token budget
    # counts their own tokens; checked against the padded forward when the learner starts
    padding_free: bool = False
    max_failures: int = 2  # Ray Train restarts of the learner group after a worker dies
    # testing: actors killed with SIGKILL once, as <actor>@<step> (learner, scheduler,
    # generator, reward), e.g. [generator@14]; see relift_ray.chaos
    kill: list = field(default_factory=list)


@dataclass
class GeneratorConfig:
    backend: str = "transformers"  # transformers (CPU or GPU) | vllm (GPU, pip install .[gpu])
    # vLLM only:
    tensor_parallel_size: int = 1  # GPUs per engine
    gpu_memory_utilization: float = 0.5  # of each GPU for weights + KV cache
    max_model_len: int = 0  # 0 = the model's own limit
    enforce_eager: bool = False  # skip CUDA graphs (faster start, slower decode)
    # object_store (a CPU state dict through Ray) | ipc (colocated, CUDA IPC) | nccl (own GPUs)
    weight_sync: str = "object_store"
    colocate: bool = False  # generators share the learners' GPUs; they sleep while learners train
    bucket_mb: int = 512  # weights are sent in packed buckets of this size
    sync_timeout_s: float = 300.0  # watchdog: a transfer slower than this fails the step


@dataclass
class ClusterConfig:
    address: str = "auto"  # Ray address; "auto" joins a running cluster or starts a local one
    num_cpus: int = 8  # logical CPUs of a locally started cluster (more than cores on purpose)
    num_learners: int = 2
    num_generators: int = 1
    num_reward_workers: int = 2
    use_gpu: bool = False
    learner_cpus: float = 0.5  # logical CPUs each actor asks for (fractional on small machines)
    generator_cpus: float = 0.5
    reward_cpus: float = 0.25
    scheduler_cpus: float = 0.25
    reward_timeout_s: float = 5.0  # hard limit per answer, enforced from outside math-verify
    # torch threads in each generator and learner on CPU (0 = Ray's default: as many as the
    # actor's whole CPUs, so 1 for fractional actors). Generation and training alternate, so
    # giving each the node's cores is usually faster.
    torch_threads: int = 0
    generator_threads: int = 0  # torch threads of each CPU generator (0 = torch_threads)
    # show Ray's own log lines (Ray Train's controller, uploads, ...) on the job's console too;
    # they always go to Ray's log files (/tmp/ray/session_latest/logs) and the dashboard
    ray_logs: bool = False
    # a locally started cluster: the Ray dashboard on 127.0.0.1:dashboard_port (its URL is
    # printed at start; a cluster run uses the cluster's own), and the Prometheus metrics
    # endpoint on metrics_export_port (0 = a free port Ray picks)
    dashboard: bool = True
    dashboard_port: int = 8265
    metrics_export_port: int = 0


@dataclass
class TrackingConfig:
    tracking_uri: str = ""  # "" = SQLite store <output_dir>/mlflow.db (artifacts beside it)
    experiment: str = "relift_ray"
    # when the base model's test accuracy is measured: start (before step 1), end (after the
    # final evaluation, with the base weights read again: step 1 comes sooner; transformers
    # backend only) or none
    eval_before: str = "start"
    # validation while training, as the released trainer's test_freq: every eval_every
    # steps (0 = never) on the test split, val_samples sample(s) per question at
    # val_temperature; the mean per data source and their average in MLflow (val/...), the
    # best validation's policy kept beside the latest checkpoint (<output_dir>/<name>/best)
    eval_every: int = 0
    # the final policy (and the best validation's) as an MLflow model, registered under the
    # run's name with the aliases "final" and "best" (mlflow models serve -m models:/<name>@final)
    register_model: bool = True
    val_temperature: float = 0.6
    val_samples: int = 1


@dataclass
class CompareConfig:
    """The comparison job (``relift compare``): methods side by side from one base model."""
    methods: list = field(default_factory=lambda: [
        "rl", "sft", "sft_then_rl", "relift", "sft_every_k", "non_hardest_buffer",
        "sft_every_step", "mixed"])  # names from relift_ray.compare.METHODS
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    parallel: int = 2  # runs at once (each is one Ray task; on GPU each takes one GPU)
    threads: int = 1  # torch threads per run on CPU
    eval_every: int = 10  # steps between greedy test evaluations (the curves)
    eval_k: int = 4  # final avg@k at temperature 0.6
    bucket_samples: int = 8  # N samples of the base model per test question for the buckets
    sft_then_rl_fraction: float = 0.33  # sft_then_rl: share of train.steps spent on SFT first


@dataclass
class EvalConfig:
    """The evaluation job (``relift evaluate``): the paper's protocol on the math benchmarks."""
    model: str = ""  # HF model dir / hub id, a checkpoint, or a run's folder ("" = model.path)
    benchmarks: list = field(default_factory=lambda: [
        "math500", "aime24", "aime25", "amc", "minerva", "olympiadbench", "gsm8k"])
    data_dir: str = ""  # folder with the ../shared/data layout ("" = $RELIFT_EVAL_DATA or that)
    k: dict = field(default_factory=dict)  # samples per question by benchmark (default: paper's)
    # the 'average' row: the mean avg@k of these (those run); the paper's table averages the
    # six below; GSM8K and the out-of-distribution sets are reported outside it
    average: list = field(default_factory=lambda: [
        "aime24", "aime25", "amc", "math500", "minerva", "olympiadbench"])
    # what the verifier sees: auto = the released evaluation script's think_or_whole (the
    # answer after "</think>", or the whole text when there is none) when the run trains with
    # data.answer_extraction=after_think, else data.answer_extraction
    answer_extraction: str = "auto"
    files: dict = field(default_factory=dict)  # benchmark -> its file (instead of data_dir's)
    max_questions: int = 0  # >0: only the first N questions of each benchmark (a slice)
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 0  # 0 = algo.max_new_tokens
    chunk_questions: int = 8  # questions per generator call (the progress granularity)
    seed: int = 0


@dataclass
class RunConfig:
    name: str = "relift"  # run name: also the Ray Train run name, so re-running resumes it
    output_dir: str = "runs"  # checkpoints, tables and the default MLflow store live here
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def storage_path(self) -> str:
        return str(Path(self.output_dir).resolve() / "ray_train")

    @property
    def mlflow_uri(self) -> str:
        return self.tracking.tracking_uri or f"sqlite:///{Path(self.output_dir).resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (Path(self.output_dir).resolve() / "mlartifacts").as_uri()

    @property
    def uses_buffer(self) -> bool:
        return self.algo.mode == "relift"

    def is_sft_step(self, step: int) -> bool:
        """Whether learner step ``step`` is an offline SFT step (mode sft, or sft_then_rl's
        first phase) rather than an RL step."""
        return self.algo.mode == "sft" or (self.algo.mode == "sft_then_rl"
                                           and step <= self.algo.sft_first_steps)

    @classmethod
    def from_dict(cls, tree: dict) -> "RunConfig":
        """A validated config from ``to_dict()``'s output (how it travels to Ray workers)."""
        return validate(_build(cls, tree, prefix=""))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        return dict(_flatten(self.to_dict()))


# The embedded default: the whole system on the toy task, sized for 2 CPU cores.
PRESETS: dict[str, dict] = {
    "paper": {},  # the dataclass defaults are the released algorithm's
    "toy": {
        "algo": {"batch_size": 16, "n_samples": 8, "max_new_tokens": 48, "lr": 1e-4,
                 "sft_lr": 5e-4, "buffer_size": 16, "sft_batch_size": 16, "grad_clip": 1.0},
        "train": {"steps": 60, "checkpoint_every": 20},
        "data": {"max_prompt_tokens": 64},
        # one reward worker scores a toy step in ~0.02 s; each one more is two more processes
        # to start (the actor and its math-verify child)
        # generation and learning take turns on the cores: the generator gets 2 threads, each
        # of the 2 learners 1 (more would spin against each other; benchmarks/bench_trl.py)
        "cluster": {"num_reward_workers": 1, "generator_threads": 2},
        # on 2 cores the base evaluation would share them with the learners' start-up
        "tracking": {"eval_before": "end", "eval_every": 20},
    },
}

_CHOICES = {
    "model.dtype": {"float32", "bfloat16"},
    "data.format": {"auto", "jsonl", "gsm8k", "math", "luffy", "parquet"},
    "data.prompt_template": {"auto", "chat", "plain"},
    "algo.mode": {"relift", "rl", "sft", "sft_then_rl", "mixed"},
    "algo.sft_trigger": {"buffer_full", "every_k", "every_step"},
    "algo.buffer_feed": {"hardest", "non_hardest"},
    "algo.rl_loss": {"relift", "grpo"},
    "train.zero_stage": {0, 1, 2, 3},
    "algo.is_correction": {"none", "tis", "clip"},
    "generator.backend": {"transformers", "vllm"},
    "generator.weight_sync": {"object_store", "ipc", "nccl"},
    "tracking.eval_before": {"start", "end", "none"},
    "algo.entropy_agg": {"minibatch", "released"},
    "algo.sft_agg": {"token_mean", "released"},
    "eval.answer_extraction": {"auto", "whole", "after_think", "think_or_whole", "boxed"},
    "data.answer_extraction": {"whole", "after_think", "think_or_whole", "boxed"},
}
_POSITIVE = ["algo.batch_size", "algo.n_samples", "algo.max_new_tokens", "algo.minibatches",
             "algo.buffer_size", "algo.sft_batch_size", "train.steps", "train.checkpoint_every",
             "cluster.num_learners", "cluster.num_generators",
             "cluster.num_reward_workers", "cluster.reward_timeout_s", "data.max_prompt_tokens",
             "algo.lr", "algo.sft_lr", "algo.grad_clip", "algo.sft_grad_clip",
             "algo.top_p", "cluster.num_cpus", "algo.sft_every",
             "compare.parallel", "compare.threads", "compare.bucket_samples",
             "eval.chunk_questions", "eval.top_p", "algo.is_cap",
             "generator.tensor_parallel_size", "generator.gpu_memory_utilization",
             "generator.bucket_mb", "generator.sync_timeout_s", "tracking.val_samples",
             "algo.entropy_token_budget", "algo.sft_micro_batch_size"]
_NON_NEGATIVE = ["train.max_tokens_per_microbatch", "train.logits_chunk_tokens",
                 "algo.max_staleness", "algo.temperature", "algo.entropy_coef", "algo.sft_entropy_coef",
                 "algo.weight_decay", "algo.clip_eps", "train.max_failures",
                 "cluster.learner_cpus", "cluster.generator_cpus", "cluster.reward_cpus",
                 "cluster.scheduler_cpus", "cluster.torch_threads", "cluster.generator_threads",
                 "algo.sft_first_steps", "algo.mixed_sft_coef", "compare.eval_every",
                 "compare.eval_k", "data.max_test_questions", "eval.max_questions",
                 "eval.temperature", "eval.max_new_tokens", "train.epochs",
                 "tracking.eval_every", "tracking.val_temperature",
                 "cluster.dashboard_port", "cluster.metrics_export_port"]


def validate(cfg: RunConfig) -> RunConfig:
    flat = cfg.flat()
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}={flat[key]!r}: must be one of {sorted(allowed, key=str)}")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise ConfigError(f"{key}={flat[key]!r}: must be > 0")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key}={flat[key]!r}: must be >= 0")
    a = cfg.algo
    if "{prompt}" not in cfg.data.plain_template:
        raise ConfigError(f"data.plain_template={cfg.data.plain_template!r}: must contain {{prompt}}")
    if a.top_p > 1:
        raise ConfigError(f"algo.top_p={a.top_p}: must be in (0, 1]")
    if a.mode != "sft" and a.batch_size * a.n_samples < cfg.cluster.num_learners * a.minibatches:
        raise ConfigError(
            f"algo.batch_size*algo.n_samples={a.batch_size * a.n_samples}: too few rollouts to give "
            f"each of cluster.num_learners={cfg.cluster.num_learners} workers "
            f"algo.minibatches={a.minibatches} non-empty minibatches")
    if a.mode == "sft_then_rl" and not 0 < a.sft_first_steps < cfg.train.steps:
        raise ConfigError(f"algo.sft_first_steps={a.sft_first_steps}: mode=sft_then_rl needs "
                          f"0 < sft_first_steps < train.steps ({cfg.train.steps})")
    if a.mode == "relift" and a.buffer_size < cfg.cluster.num_learners:
        raise ConfigError(f"algo.buffer_size={a.buffer_size}: must be >= cluster.num_learners "
                          f"({cfg.cluster.num_learners}) so every learner gets a demonstration")
    if a.rl_loss == "grpo" and a.clip_eps <= 0:
        raise ConfigError(f"algo.clip_eps={a.clip_eps}: the grpo loss needs a clip range > 0")
    c = cfg.compare
    if not c.methods or not c.seeds:
        raise ConfigError(f"compare.methods={c.methods!r} / compare.seeds={c.seeds!r}: "
                          f"need at least one of each")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in c.seeds):
        raise ConfigError(f"compare.seeds={c.seeds!r}: must be integers")
    # relift_ray.compare.MATCHED (not imported: it pulls torch into every config load)
    matched = [m for m in c.methods if str(m).startswith("sft_matched")]
    if matched and "relift" not in c.methods:
        raise ConfigError(f"compare.methods: {', '.join(matched)} match the demonstrations "
                          f"ReLIFT used in the same seed, so relift must be in compare.methods")
    if not 0 < c.sft_then_rl_fraction < 1:
        raise ConfigError(f"compare.sft_then_rl_fraction={c.sft_then_rl_fraction}: must be in (0, 1)")
    from relift_ray.benchmarks import BENCHMARKS
    e = cfg.eval
    unknown = [b for b in list(e.benchmarks) + list(e.k) + list(e.average) + list(e.files)
               if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"eval.benchmarks / eval.k / eval.average / eval.files: unknown "
                          f"benchmark {unknown[0]!r} "
                          f"(known: {', '.join(BENCHMARKS)})")
    bad_k = {b: k for b, k in e.k.items() if not (isinstance(k, int) and k > 0)}
    if bad_k:
        raise ConfigError(f"eval.k.{next(iter(bad_k))}={next(iter(bad_k.values()))!r}: "
                          f"must be a positive integer")
    if e.top_p > 1:
        raise ConfigError(f"eval.top_p={e.top_p}: must be in (0, 1]")
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"name={cfg.name!r}: must be a non-empty name without '/'")
    g = cfg.generator
    if g.backend == "vllm" and not cfg.cluster.use_gpu:
        raise ConfigError("generator.backend=vllm: needs cluster.use_gpu=true (vLLM runs on GPUs)")
    if g.backend == "vllm" and cfg.tracking.eval_before == "end":
        raise ConfigError("tracking.eval_before=end: reloading the base weights at the end is "
                          "implemented for generator.backend=transformers; use start or none")
    if g.backend != "vllm":
        for key, bad in (("generator.weight_sync", g.weight_sync != "object_store"),
                         ("generator.colocate", g.colocate)):
            if bad:
                raise ConfigError(f"{key}={cfg.flat()[key]!r}: needs generator.backend=vllm")
    if cfg.algo.max_staleness and g.colocate:
        raise ConfigError(f"algo.max_staleness={cfg.algo.max_staleness} with "
                          f"generator.colocate=true: colocated engines sleep while the learners "
                          f"train on their GPUs, so they cannot sample ahead; give the "
                          f"generators GPUs of their own (colocate=false, weight_sync=nccl or "
                          f"object_store) or set max_staleness=0")
    if cfg.algo.max_staleness and cfg.algo.mode == "sft":
        raise ConfigError(f"algo.max_staleness={cfg.algo.max_staleness}: mode=sft samples "
                          f"nothing; set max_staleness=0")
    if g.colocate and g.weight_sync == "nccl":
        raise ConfigError("generator.weight_sync=nccl with generator.colocate=true: colocated "
                          "generators share the learners' GPUs, use weight_sync=ipc")
    if g.colocate and g.tensor_parallel_size > 1:
        raise ConfigError(f"generator.tensor_parallel_size={g.tensor_parallel_size} with "
                          f"generator.colocate=true: a colocated engine shares one learner's "
                          f"GPU; use tensor_parallel_size=1, or engines on GPUs of their own")
    if g.colocate and cfg.cluster.num_generators != cfg.cluster.num_learners:
        raise ConfigError(f"generator.colocate=true: one engine per learner GPU, so "
                          f"cluster.num_generators ({cfg.cluster.num_generators}) must equal "
                          f"cluster.num_learners ({cfg.cluster.num_learners})")
    if g.weight_sync == "ipc" and not g.colocate:
        raise ConfigError("generator.weight_sync=ipc: needs generator.colocate=true (CUDA IPC "
                          "works only between processes on the same GPU)")
    from relift_ray import chaos
    try:
        chaos.parse(cfg.train.kill)
    except ValueError as e:
        raise ConfigError(f"train.kill: {e}") from None
    if g.gpu_memory_utilization > 1:
        raise ConfigError(f"generator.gpu_memory_utilization={g.gpu_memory_utilization}: "
                          f"must be in (0, 1]")
    return cfg


# ---------------------------------------------------------------- loading and overrides

def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (optional ``preset:`` key) + ``a.b=value`` overrides -> validated RunConfig."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    tree = _with_extends(tree, Path(path)) if path is not None else tree
    preset = tree.pop("preset", None)
    merged: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{source}: preset={preset!r}: must be one of {sorted(PRESETS)}")
        _merge(merged, PRESETS[preset])
    _merge(merged, tree)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        _set_dotted(merged, key.strip(), _Override(value))
    return validate(_build(RunConfig, merged, prefix=""))


def _with_extends(tree: dict, path: Path, seen: tuple = ()) -> dict:
    """``extends: other.yaml`` (relative to this file): that file's tree, overridden by this one."""
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    base_path = (path.parent / str(parent)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends={parent}: circular")
    try:
        base = yaml.safe_load(base_path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: extends={parent}: {base_path} does not exist") from None
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path}: the top level must be a mapping")
    base = _with_extends(base, base_path, seen + (base_path,))
    merged = dict(base)
    if "preset" in tree and "preset" in base and tree["preset"] != base["preset"]:
        raise ConfigError(f"{path}: preset={tree['preset']!r} differs from the extended "
                          f"{base_path.name}'s preset={base['preset']!r}")
    _merge(merged, tree)
    return merged


class _Override(str):
    """A command-line value: text fields take it as written, the others as YAML reads it
    (so data.plain_template="Q: {prompt}" stays text)."""

    @property
    def parsed(self):
        try:
            return yaml.safe_load(str(self))
        except yaml.YAMLError as e:
            raise ConfigError(f"override value {str(self)!r}: not valid YAML ({e})") from None


def _merge(into: dict, other: dict) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = dict(v) if isinstance(v, dict) else v


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def _build(cls, tree: dict, prefix: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in tree.items():
        hint = hints[name]
        key = prefix + name
        if isinstance(value, _Override):
            value = str(value) if hint is str else value.parsed
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key + ".")
        else:
            kwargs[name] = _coerce(key, hint, value)
    return cls(**kwargs)


def _coerce(key: str, hint, value):
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-6" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}: expected a string")
    if hint is list:
        if isinstance(value, str):  # from the command line: a,b,c
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list):
            return list(value)
        raise ConfigError(f"{key}={value!r}: expected a list")
    if hint is dict:
        if isinstance(value, dict):
            return {k: v.parsed if isinstance(v, _Override) else v for k, v in value.items()}
        raise ConfigError(f"{key}={value!r}: expected a mapping, e.g. {{aime24: 32}}")
    return value


def _flatten(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
