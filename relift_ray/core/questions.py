"""The scheduler's pure data structures: per-question records, the hard buffer, the sampler,
and the pass-rate buckets of the paper's analysis (Easy >= 6/8, Medium 3-5/8, Hard 1-2/8,
Hardest 0/8). Plain Python, checkpointed as JSON by the scheduler (relift_ray.scheduler)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from relift_ray.config import RunConfig
from relift_ray.records import Question, ScoredGroup

BUCKETS = ("easy", "medium", "hard", "hardest")


def bucket_of(pass_rate: float) -> str:
    """Easy >= 6/8, Medium 3-5/8, Hard 1-2/8, Hardest 0/8, scaled to any N."""
    if pass_rate == 0:
        return "hardest"
    if pass_rate < 3 / 8:
        return "hard"
    if pass_rate < 6 / 8:
        return "medium"
    return "easy"


@dataclass
class QuestionRecord:
    attempts: int = 0  # rollouts sampled
    correct: int = 0
    # [(step, pass rate, weight version that sampled it)] each time it was sampled
    history: list = field(default_factory=list)
    first_solved_step: int | None = None
    times_buffered: int = 0
    sft_steps: list = field(default_factory=list)  # learner steps whose SFT batch held it
    solved_after_sft: bool | None = None  # None until fine-tuned; then any success afterwards


class QuestionTable:
    def __init__(self):
        self.records: dict[str, QuestionRecord] = {}

    def get(self, qid: str) -> QuestionRecord:
        return self.records.setdefault(qid, QuestionRecord())

    def observe(self, step: int, group: ScoredGroup) -> None:
        rec = self.get(group.question.id)
        n_ok = sum(r > 0 for r in group.rewards)
        rec.attempts += len(group.rewards)
        rec.correct += n_ok
        version = group.completions[0].weight_version if group.completions else step - 1
        rec.history.append((step, group.pass_rate, version))
        if n_ok and rec.first_solved_step is None:
            rec.first_solved_step = step
        if rec.sft_steps:
            rec.solved_after_sft = bool(rec.solved_after_sft) or n_ok > 0

    def mark_sft(self, step: int, qids) -> None:
        for qid in qids:
            rec = self.get(qid)
            rec.sft_steps.append(step)
            if rec.solved_after_sft is None:
                rec.solved_after_sft = False

    def rows(self, questions: dict[str, Question]) -> list[dict]:
        out = []
        for qid, rec in sorted(self.records.items()):
            q = questions.get(qid)
            last = rec.history[-1][1] if rec.history else None
            out.append({"id": qid, "level": q.level if q else "", "source": q.source if q else "",
                        "attempts": rec.attempts, "correct": rec.correct, "last_pass_rate": last,
                        # step:pass rate, with @version when it was not step - 1 (async)
                        "pass_rate_history": " ".join(
                            f"{s}:{p:.3g}" + ("" if v == s - 1 else f"@{v}")
                            for s, p, v in rec.history),
                        "first_solved_step": rec.first_solved_step,
                        "times_buffered": rec.times_buffered,
                        "sft_steps": " ".join(map(str, rec.sft_steps)),
                        "solved_after_sft": rec.solved_after_sft})
        return out


class HardBuffer:
    """Question ids with demonstrations, newest first. A question already waiting moves to the
    front instead of appearing twice, so one SFT batch never holds a demonstration twice."""

    def __init__(self):
        self.ids: list[str] = []

    def __len__(self):
        return len(self.ids)

    def push(self, qids: list[str]) -> None:
        new = list(dict.fromkeys(qids))
        self.ids = new + [q for q in self.ids if q not in set(new)]

    def take_newest(self, m: int) -> list[str]:
        taken, self.ids = self.ids[:m], self.ids[m:]
        return taken


class Sampler:
    """Shuffled passes over the training questions; its position and RNG are checkpointed."""

    def __init__(self, n: int, seed: int, drop_last: bool = False):
        self.n, self.rng, self.drop_last = n, random.Random(seed), drop_last
        self.epoch, self.pos = 0, 0
        self.order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        self.rng.shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next ``k`` questions. A pass that has fewer than ``k`` left either continues
        into the next (the default) or, ``drop_last``, is cut there: every batch then comes
        from one pass, as a data loader with drop_last gives them (the released code's)."""
        out = []
        if self.drop_last and self.n - self.pos < k <= self.n:
            self.pos = self.n
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos, self.order = self.epoch + 1, 0, self._shuffle()
            take = min(k - len(out), self.n - self.pos)
            out += self.order[self.pos:self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "order": list(self.order),
                "rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos, self.order = s["epoch"], s["pos"], list(s["order"])
        self.rng.setstate(_as_rng_state(s["rng"]))


def _as_rng_state(s):
    # a state that went through pickling/YAML may have lists where random wants tuples
    return (s[0], tuple(s[1]), s[2])


def history_entry(h) -> tuple:
    # (step, pass rate, version); checkpoints before asynchronous rollouts kept no version
    return tuple(h) if len(h) == 3 else (h[0], h[1], h[0] - 1)


def steps_of(cfg: RunConfig, n_questions: int) -> int:
    """train.steps, or with train.epochs > 0 that many passes of whole batches (drop_last:
    a pass's remainder smaller than algo.batch_size is not trained on)."""
    if cfg.train.epochs <= 0:
        return cfg.train.steps
    per_epoch = n_questions // cfg.algo.batch_size
    if per_epoch == 0:
        raise ValueError(f"train.epochs={cfg.train.epochs}: {n_questions} training questions "
                         f"make no whole batch of algo.batch_size={cfg.algo.batch_size}")
    return cfg.train.epochs * per_epoch


def group_metrics(groups: list[ScoredGroup]) -> dict:
    counts = {b: 0 for b in BUCKETS}
    for g in groups:
        counts[bucket_of(g.pass_rate)] += 1
    rewards = [r for g in groups for r in g.rewards]
    return {"reward_mean": sum(rewards) / max(len(rewards), 1),
            **{f"bucket_{b}": n for b, n in counts.items()}}
