"""Accuracy statistics: per-level and per-source means of question scores, and the spread
over seeds (mean, sample std, 95% t and Welch intervals) the comparison job reports."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict

from relift_ray.records import Question


def summarize(questions: list[Question], scores: dict[str, float]) -> dict[str, float]:
    """{"overall": mean, "level_<k>": mean, ...} over the questions that have a score."""
    per = defaultdict(list)
    for q in questions:
        if q.id in scores:
            per[f"level_{q.level}"].append(scores[q.id])
    every = [s for v in per.values() for s in v]
    out = {"overall": sum(every) / max(len(every), 1)}
    out.update({key: sum(v) / len(v) for key, v in sorted(per.items())})
    return out


def source_scores(questions: list[Question], scores: dict[str, float]) -> dict[str, float]:
    """{data source: mean score of its questions, ..., "mean": the average of those means}:
    the released trainer's validation figures (each source counts once, whatever its size)."""
    per = defaultdict(list)
    for q in questions:
        if q.id in scores:
            per[q.source or "data"].append(scores[q.id])
    out = {src: sum(v) / len(v) for src, v in sorted(per.items())}
    out["mean"] = sum(out.values()) / max(len(out), 1)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def ci95(values: list[float]) -> float:
    """Half-width of the 95% t interval of the mean (0 for fewer than 2 values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return 0.0
    from scipy.stats import t
    return t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(mean(a) - mean(b), and its 95% Welch interval); one-sample t interval when b is [].
    The interval is (nan, nan) when a side has fewer than 2 values: no spread to judge by."""
    ma, nan = statistics.fmean(a), float("nan")
    if not b:
        h = ci95(a)
        return (ma, ma - h, ma + h) if len(a) > 1 else (ma, nan, nan)
    mb = statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return ma - mb, nan, nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    d, se = ma - mb, math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    from scipy.stats import t
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = t.ppf(0.975, df) * se
    return d, d - h, d + h
