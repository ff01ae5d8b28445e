"""Accuracy of the current policy on held-out questions, per difficulty level.

Uses whatever generators and reward workers it is given (actors or in-process objects).
``question_scores`` gives each question's mean reward over n samples (greedy when the
temperature is 0, avg@n otherwise); ``evaluate`` turns those into overall and per-level
accuracy (``relift_ray.core.stats.summarize``).
"""
from __future__ import annotations

from collections import defaultdict

from relift_ray.core.stats import summarize
from relift_ray.records import Question, SamplingParams
from relift_ray.rollout.calls import call_all, score_all

EVAL_TEMPERATURE = 0.6  # the paper's sampling temperature for avg@k


def question_scores(generators: list, rewarders: list, questions: list[Question], *, n: int = 1,
                    temperature: float = 0.0, max_new_tokens: int = 64,
                    seed: int = 0, deadlines: tuple = (None, None),
                    step=None) -> dict[str, float]:
    """{question id: mean reward over n samples}. ``deadlines``: (generate, score) seconds
    for each actor's call (relift_ray.rollout.calls; None: none), ``step`` named in their
    warnings."""
    k = len(generators)
    chunks = [questions[i::k] for i in range(k)]
    params = SamplingParams(n=n, temperature=temperature, top_p=1.0,
                            max_new_tokens=max_new_tokens, seed=seed)
    outs = call_all(generators, "generate", [(c, params) for c in chunks], deadlines[0],
                    "generator", step)
    pairs, ids = [], []
    for chunk, out in zip(chunks, outs):
        for q, group in zip(chunk, out):
            pairs += [(c.text, q.answer) for c in group]
            ids += [q.id] * len(group)
    rewards = [r.value for r in score_all(rewarders, pairs, deadlines[1], step)]
    per = defaultdict(list)
    for qid, rew in zip(ids, rewards):
        per[qid].append(rew)
    return {qid: sum(v) / len(v) for qid, v in per.items()}


def evaluate(generators: list, rewarders: list, questions: list[Question], *, n: int = 1,
             temperature: float = 0.0, max_new_tokens: int = 64, seed: int = 0) -> dict:
    """{"overall": acc, "level_<k>": acc, ...}: mean reward over n samples per question."""
    scores = question_scores(generators, rewarders, questions, n=n, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed)
    return summarize(questions, scores)
