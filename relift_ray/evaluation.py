"""Accuracy of the current policy on held-out questions, per difficulty level.

Uses whatever generators and reward workers it is given (actors or in-process objects).
"""
from __future__ import annotations

from collections import defaultdict

from relift_ray.actors import call_all
from relift_ray.records import Question, SamplingParams


def evaluate(generators: list, rewarders: list, questions: list[Question], *, n: int = 1,
             temperature: float = 0.0, max_new_tokens: int = 64, seed: int = 0) -> dict:
    """{"overall": acc, "level_<k>": acc, ...}: mean reward over n samples per question."""
    k = len(generators)
    chunks = [questions[i::k] for i in range(k)]
    params = SamplingParams(n=n, temperature=temperature, top_p=1.0,
                            max_new_tokens=max_new_tokens, seed=seed)
    outs = call_all(generators, "generate", [(c, params) for c in chunks])
    pairs, levels = [], []
    for chunk, out in zip(chunks, outs):
        for q, group in zip(chunk, out):
            pairs += [(c.text, q.answer) for c in group]
            levels += [q.level] * len(group)
    r = len(rewarders)
    size = -(-len(pairs) // r)
    scored = call_all(rewarders, "score", [(pairs[i * size:(i + 1) * size],) for i in range(r)])
    rewards = [x for s in scored for x, _ in s]
    per = defaultdict(list)
    for lvl, rew in zip(levels, rewards):
        per[f"level_{lvl}"].append(rew)
    out = {"overall": sum(rewards) / max(len(rewards), 1)}
    out.update({key: sum(v) / len(v) for key, v in sorted(per.items())})
    return out
