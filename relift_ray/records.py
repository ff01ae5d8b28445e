"""Typed records that cross actor boundaries (scheduler, generators, reward pool, learners).

Frozen dataclasses, pickled by Ray as they are. Imports no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str  # the text the model sees (chat template already applied)
    answer: str  # ground truth, as the verifier reads it
    demo: str | None = None  # a worked demonstration (the response an SFT step teaches)
    source: str = ""
    level: int = 0
    # (role, content) pairs when the data has chat messages
    messages: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    logprobs: bool = False  # return each sampled token's log-probability (behaviour policy)


@dataclass(frozen=True)
class Completion:
    question_id: str
    text: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]  # ends with EOS when the model stopped by itself
    weight_version: int  # the policy version that sampled it
    logprobs: tuple[float, ...] = ()  # per response token, from the sampler; () if not asked for


@dataclass(frozen=True)
class AdapterWeights:
    """A LoRA run's policy as a weight sync sends it (model.lora.sync=adapter): the adapters
    alone, by PEFT's names (``...q_proj.lora_A.weight``), with their PEFT settings (r,
    lora_alpha, target_modules, ...). Generators load it onto the base model they started
    with; relift_ray.data.lora reads and writes it."""
    config: dict
    tensors: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Reward(NamedTuple):
    """One scored answer: the reward and how the verifier got there (``Reward.OK``,
    ``NO_ANSWER``, ``TIMEOUT``, ``MEMORY`` (past the scoring process's memory limit),
    ``KILLED`` (the scoring process died on it twice), or ``"error: ..."``)."""
    value: float
    status: str = "ok"

    OK = "ok"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    KILLED = "killed"
    ERROR = "error"

    @property
    def timed_out(self) -> bool:
        return self.status == Reward.TIMEOUT

    @property
    def no_answer(self) -> bool:
        return self.status == Reward.NO_ANSWER

    @property
    def failed(self) -> bool:
        return self.status.startswith(Reward.ERROR)


@dataclass(frozen=True)
class ScoredGroup:
    """The N completions of one question with their rewards."""
    question: Question
    completions: tuple[Completion, ...]
    rewards: tuple[float, ...]

    @property
    def pass_rate(self) -> float:
        return sum(r > 0 for r in self.rewards) / len(self.rewards)


@dataclass(frozen=True)
class Sample:
    """One training sequence: prompt ids + response ids (loss on the response only)."""
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    advantage: float = 0.0  # RL only
    question_id: str = ""
    behavior_logprobs: tuple[float, ...] = ()  # the sampler's per-token log-probs (vLLM), if kept


@dataclass
class BatchStats:
    """The scheduler's figures for one step's batch, logged under these names. The rollout
    figures stay None on an offline SFT step (nothing is sampled)."""
    # the rollouts (RL steps)
    weight_version: int | None = None  # the weights that sampled them
    reward_mean: float | None = None
    bucket_easy: int | None = None  # questions by their pass rate: >= 6/8
    bucket_medium: int | None = None  # 3-5/8
    bucket_hard: int | None = None  # 1-2/8
    bucket_hardest: int | None = None  # 0/8
    gen_seconds: float | None = None
    gen_tokens_per_s: float | None = None
    response_length: float | None = None  # mean tokens per response
    reward_seconds: float | None = None
    reward_timeouts: int | None = None
    reward_no_answer: int | None = None
    # the scheduler's state once the batch is made
    buffer_size: int = 0
    sft_steps: int = 0
    demos_used_unique: int = 0
    demos_used_total: int = 0
    demos_used_share: float = 0.0  # of the training questions' demonstrations
    fed_without_demo: int = 0  # questions the buffer would have taken, had they one
    scheduler_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "BatchStats":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class StepMetrics:
    """One learner step's figures (``relift_ray.learner.step.learner_step``); ``flat()`` names
    them as MLflow and the Ray gauges do."""
    step: int
    batch: BatchStats  # the scheduler's figures for the step's batch
    update: dict  # the learner's, by name: rl/..., sft/... losses and norms, learner_updates
    batch_wait_seconds: float  # generation, reward, records and the transfer, as waited for
    train_seconds: float
    weight_sync_seconds: float
    publish_wait_seconds: float  # asynchronous rollouts: waiting for the batch sampled ahead
    staleness: int  # weight versions the batch's sampler was behind the learner
    sft_this_step: int
    validation: dict = field(default_factory=dict)  # val/... after a validation
    checkpoint_seconds: float | None = None  # when the step checkpointed
    step_seconds: float | None = None  # wall time since the previous step ended
    # bytes the weight sync sent per generator (the adapters alone in a LoRA run)
    weight_sync_bytes: int | None = None

    def flat(self) -> dict:
        out = {**self.batch.as_dict(), **self.update, **self.validation}
        for name in ("batch_wait_seconds", "train_seconds", "weight_sync_seconds",
                     "weight_sync_bytes", "publish_wait_seconds", "staleness", "sft_this_step",
                     "checkpoint_seconds", "step_seconds"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class TrainBatch:
    """What a learner step consumes: an RL batch and, when the buffer triggered, an SFT batch."""
    step: int
    rl: tuple[Sample, ...] = ()
    sft: tuple[Sample, ...] = ()
    weight_version: int = 0  # the version the RL samples came from
    stats: BatchStats = field(default_factory=BatchStats)  # the scheduler's figures
    sft_mixed: bool = False  # mode=mixed: the SFT term joins the RL loss instead of its own step

    def to_dict(self) -> dict:
        """JSON-able (a checkpoint keeps the batches made ahead of the learners)."""
        return {"step": self.step, "rl": [list(map(list, _sample_fields(x))) for x in self.rl],
                "sft": [list(map(list, _sample_fields(x))) for x in self.sft],
                "weight_version": self.weight_version, "sft_mixed": self.sft_mixed,
                "stats": self.stats.as_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainBatch":
        return cls(step=d["step"], rl=tuple(_sample(x) for x in d["rl"]),
                   sft=tuple(_sample(x) for x in d["sft"]), weight_version=d["weight_version"],
                   sft_mixed=d["sft_mixed"], stats=BatchStats.from_dict(d["stats"]))

    def shard(self, rank: int, world: int) -> "TrainBatch":
        # Distribution changes the code here: each learner takes every world-th sample.
        return TrainBatch(step=self.step, rl=self.rl[rank::world], sft=self.sft[rank::world],
                          weight_version=self.weight_version, stats=self.stats,
                          sft_mixed=self.sft_mixed)


def _sample_fields(x: Sample) -> tuple:
    # (prompt ids, response ids, [advantage], [question id], behaviour log-probs)
    return (x.prompt_ids, x.response_ids, [x.advantage], [x.question_id], x.behavior_logprobs)


def _sample(f: list) -> Sample:
    return Sample(tuple(f[0]), tuple(f[1]), f[2][0], f[3][0], tuple(f[4]))


@dataclass(frozen=True)
class Fields:
    """Field names of the plain jsonl format."""
    prompt: str = "prompt"
    answer: str = "answer"
    demo: str = "demo"
    id: str = "id"


def check_versions(got: list, version: int) -> None:
    """Every generator reports weight version ``version`` (what each one's load returned)."""
    if set(got) != {version}:
        raise RuntimeError(f"generators hold weight versions {got} after the sync, "
                           f"expected {version}")


@dataclass(frozen=True)
class LoopSpec:
    """What each learner worker's loop is given (Ray Train's ``train_loop_config``). Ray
    Train's controller unpickles it: plain data and one object reference, so the controller
    imports nothing heavy (actor handles would make it load their classes' modules)."""
    cfg: dict  # RunConfig.to_dict()
    model_path: str
    actors: Any  # ray.put((scheduler, generators)): fetched by the workers
    mlflow_uri: str = ""
    mlflow_run_key: str = ""  # where rank 0 finds the driver's MLflow run id
    job_start: float = 0.0  # the job's start (time.time()), for the start-up lines
    engines: tuple = ()  # colocated vLLM: each engine's (node, GPU), learners pinned to them


@dataclass(frozen=True)
class DataInfo:
    """What the scheduler actor read (it renders the prompts; the driver loads no tokenizer):
    the rendered test questions, and the training questions' count, the long prompts dropped,
    the demonstrations among them, and the learner steps they make."""
    test: tuple[Question, ...]
    train: int
    dropped: int
    demos: int
    steps: int


@dataclass
class RunSummary:
    """What a training run returns (``relift_ray.jobs.train.run``) and logs to MLflow."""
    run_id: str
    before: dict  # test accuracy of the base policy ({} when tracking.eval_before=none)
    after: dict  # test accuracy of the final policy: {"overall": ..., "level_<k>": ...}
    sft_steps: int
    demos_used_unique: int
    demos_used_total: int
    demos_available: int
    reward_timeouts: int
    checkpoint: str  # the last checkpoint's folder ("" if none)
    question_table: str  # questions.csv
    wall_seconds: float
    val_best_score: float | None = None  # validation while training (tracking.eval_every)
    val_best_step: int | None = None
    val_last_score: float | None = None
    val_last_step: int | None = None
    best_policy: str = ""
    mlflow_models: dict = field(default_factory=dict)  # alias (final, best) -> models:/ URI
    # the reward workers' scoring processes: found dead and restarted; answers past their
    # memory limit; answers scored 0 because the process died on them twice
    reward_deaths: int = 0
    reward_memory: int = 0
    reward_killed: int = 0

    def numbers(self) -> dict:
        """The summary's numeric fields, as MLflow metrics."""
        return {k: v for k, v in vars(self).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class BaseEval:
    """The base model on the test split, as the comparison job measures it."""
    greedy: dict  # greedy accuracy: {"overall": ..., "level_<k>": ...}
    greedy_scores: dict  # question id -> greedy reward
    sampled: dict  # avg@k at temperature 0.6 ({} when k = 0)
    sampled_scores: dict  # question id -> avg@k
    pass_rates: dict = field(default_factory=dict)  # question id -> pass rate over N samples
    profile: dict = field(default_factory=dict)  # response length, truncated share, entropy
    answered_ids: list = field(default_factory=list)  # greedy answers the verifier could read


@dataclass
class RunResult:
    """One in-process run (relift_ray.jobs.in_process), as the comparison job reads it."""
    name: str
    mode: str
    seed: int
    history: list  # each step's metrics (with "step" and "step_seconds")
    curve: list  # at each evaluation point: greedy accuracy, response length, truncation, entropy
    greedy: dict  # the final policy's greedy accuracy: {"overall": ..., "level_<k>": ...}
    greedy_scores: dict  # question id -> greedy reward
    sampled: dict  # the final avg@k at temperature 0.6 ({} when k = 0)
    sampled_scores: dict  # question id -> avg@k
    sft_steps: int = 0
    demos_used_unique: int = 0
    demos_used_ids: list = field(default_factory=list)
    demos_used_total: int = 0
    demos_available: int = 0
    learner_updates: int = 0
    question_rows: list = field(default_factory=list)  # the scheduler's per-question table
    reward_stats: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    method: str = ""  # the comparison method it ran (set by the comparison job)
    # the final policy's greedy test answers that the verifier could read (question ids)
    answered_ids: list = field(default_factory=list)
    questions_seen: int = 0  # distinct training questions sampled for RL
    mlflow_run_id: str = ""  # its MLflow child run (set by the comparison job)
