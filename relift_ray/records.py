"""Typed records that cross actor boundaries (scheduler, generators, reward pool, learners).

Frozen dataclasses, pickled by Ray as they are. Imports no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str  # the text the model sees (chat template already applied)
    answer: str  # ground truth, as the verifier reads it
    demo: str | None = None  # a worked demonstration (the response an SFT step teaches)
    source: str = ""
    level: int = 0
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs when the data has chat messages


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


class Reward(NamedTuple):
    """One scored answer: the reward and how the verifier got there (``Reward.OK``,
    ``NO_ANSWER``, ``TIMEOUT``, or ``"error: ..."``)."""
    value: float
    status: str = "ok"

    OK = "ok"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
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


@dataclass(frozen=True)
class TrainBatch:
    """What a learner step consumes: an RL batch and, when the buffer triggered, an SFT batch."""
    step: int
    rl: tuple[Sample, ...] = ()
    sft: tuple[Sample, ...] = ()
    weight_version: int = 0  # the version the RL samples came from
    metrics: dict = field(default_factory=dict)  # scheduler-side figures for this step
    sft_mixed: bool = False  # mode=mixed: the SFT term joins the RL loss instead of its own step

    def to_dict(self) -> dict:
        """JSON-able (a checkpoint keeps the batches made ahead of the learners)."""
        return {"step": self.step, "rl": [list(map(list, _sample_fields(x))) for x in self.rl],
                "sft": [list(map(list, _sample_fields(x))) for x in self.sft],
                "weight_version": self.weight_version, "sft_mixed": self.sft_mixed,
                "metrics": {k: v for k, v in self.metrics.items()
                            if isinstance(v, (int, float, str, bool))}}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainBatch":
        return cls(step=d["step"], rl=tuple(_sample(x) for x in d["rl"]),
                   sft=tuple(_sample(x) for x in d["sft"]), weight_version=d["weight_version"],
                   sft_mixed=d["sft_mixed"], metrics=dict(d["metrics"]))

    def shard(self, rank: int, world: int) -> "TrainBatch":
        # Distribution changes the code here: each learner takes every world-th sample.
        return TrainBatch(step=self.step, rl=self.rl[rank::world], sft=self.sft[rank::world],
                          weight_version=self.weight_version, metrics=self.metrics,
                          sft_mixed=self.sft_mixed)


def _sample_fields(x: Sample) -> tuple:
    # (prompt ids, response ids, [advantage], [question id], behaviour log-probs)
    return (x.prompt_ids, x.response_ids, [x.advantage], [x.question_id], x.behavior_logprobs)


def _sample(f: list) -> Sample:
    return Sample(tuple(f[0]), tuple(f[1]), f[2][0], f[3][0], tuple(f[4]))
