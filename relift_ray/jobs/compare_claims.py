"""The pre-registered claims of the real-model comparisons, tested on the test questions.

With two or three seeds, an interval over seeds says almost nothing (a t interval with one
degree of freedom is 12.7 standard errors wide). These claims are tested on the test
questions instead: for "A > B" on a per-question figure (greedy correct; a readable final
answer), each question's difference A - B is averaged over the seeds (paired by seed; the
base model is one reference for every seed), and the mean over questions gets a 95%
percentile bootstrap interval over the questions (10,000 resamples, fixed seed). Verdicts:

- "A > B" **holds** when that interval lies above 0 and A > B in every seed; **does not hold**
  when it lies below 0; **inconclusive** otherwise;
- "A does not move F" (equivalence) **holds** when the interval lies within +-margin;
  **does not hold** when it lies wholly outside; **inconclusive** otherwise;
- "A is level with B" **holds** when the interval contains 0, and **does not hold** when it
  lies wholly above or below.

``smollm2_gsm8k_claims`` is docs/preregistration_smollm2_gsm8k.md (`compare.claims:
smollm2_gsm8k`), ``smollm2_toy_claims`` the toy's findings on SmolLM2 from the same document
(`compare.claims: smollm2_toy`), ``smollm2_gsm8k_lora_claims`` the LoRA row's expectation
stated in docs/lora.md (`compare.claims: smollm2_gsm8k_lora`).
"""
from __future__ import annotations

import random
import statistics

from relift_ray.core.questions import bucket_of
from relift_ray.records import BaseEval, RunResult

RESAMPLES = 10_000
ACCURACY_MARGIN, ANSWERED_MARGIN = 0.02, 0.05  # (a): "does not move", per question share
MINORITY = 0.5  # (c): a minority of the demonstrations of the questions it sampled
SMALL_SHARE = 0.20  # the toy's finding: ReLIFT uses at most this share of all demonstrations


def per_question(x, metric: str, qids: list[str]) -> list[float]:
    """A run's (or the base model's) per-question figure: ``accuracy`` (greedy reward) or
    ``answered`` (1 when the verifier could read a final answer)."""
    if metric == "accuracy":
        return [float(x.greedy_scores.get(q, 0.0)) for q in qids]
    if metric == "answered":
        ids = set(x.answered_ids)
        return [float(q in ids) for q in qids]
    raise ValueError(f"unknown per-question figure {metric!r} (accuracy | answered)")


def bootstrap(diffs: list[float], resamples: int = RESAMPLES, seed: int = 0
              ) -> tuple[float, float, float]:
    """(mean, low, high): the 95% percentile bootstrap interval of the mean of ``diffs``."""
    n = len(diffs)
    if not n:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired(a: list[RunResult], b: list[RunResult] | BaseEval, metric: str,
           qids: list[str]) -> dict:
    """A - B per question, averaged over the seeds both ran (B: runs, or the base model):
    its mean with the bootstrap interval, and each seed's own mean difference."""
    ref = {None: b} if isinstance(b, BaseEval) else {r.seed: r for r in b}
    pairs = [(r, ref.get(None, ref.get(r.seed))) for r in a]
    pairs = [(x, y) for x, y in pairs if y is not None]
    if not pairs or not qids:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan"),
                "seeds": []}
    per_seed = [[p - q for p, q in zip(per_question(x, metric, qids),
                                       per_question(y, metric, qids))] for x, y in pairs]
    diffs = [statistics.fmean(col) for col in zip(*per_seed)]
    d, lo, hi = bootstrap(diffs)
    return {"difference": d, "low": lo, "high": hi,
            "seeds": [statistics.fmean(s) for s in per_seed]}


def greater(row: dict) -> str:
    if row["low"] > 0 and all(s > 0 for s in row["seeds"]):
        return "holds"
    return "does not hold" if row["high"] < 0 else "inconclusive"


def unmoved(row: dict, margin: float) -> str:
    if -margin < row["low"] and row["high"] < margin:
        return "holds"
    return "does not hold" if row["low"] > margin or row["high"] < -margin else "inconclusive"


def level(row: dict) -> str:
    if row["low"] <= 0 <= row["high"]:
        return "holds"
    return "does not hold" if row["low"] > 0 or row["high"] < 0 else "inconclusive"  # nan


def combine(verdicts: list[str]) -> str:
    if "not run" in verdicts:
        return "not run"
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


class Claims:
    """Rows of one hypothesis set: each comparison, then one verdict row per hypothesis."""

    def __init__(self, base: BaseEval, results: list[RunResult]):
        self.base, self.rows, self.verdicts = base, [], {}
        self.by: dict[str, list[RunResult]] = {}
        for r in results:
            self.by.setdefault(r.method, []).append(r)
        self.qids = sorted(base.greedy_scores)

    def compare(self, h: str, what: str, a: str, b: str, metric: str, qids=None,
                rule=greater) -> str:
        qids = self.qids if qids is None else qids
        if a not in self.by or (b != "base" and b not in self.by):
            return self._add(h, {"comparison": what, "verdict": "not run"})
        row = paired(self.by[a], self.base if b == "base" else self.by[b], metric, qids)
        row["verdict"] = rule(row) if qids else "inconclusive"
        row["seeds"] = " ".join(f"{s:+.3f}" for s in row["seeds"])
        return self._add(h, {"comparison": what, **row})

    def _add(self, h: str, row: dict) -> str:
        self.rows.append({"hypothesis": h, **row})
        self.verdicts.setdefault(h, []).append(row["verdict"])
        return row["verdict"]

    def share(self, h: str, what: str, shares: list[float], rule) -> str:
        if not shares:
            return self._add(h, {"comparison": what, "verdict": "not run"})
        return self._add(h, {"comparison": what, "difference": statistics.fmean(shares),
                             "low": min(shares), "high": max(shares),
                             "seeds": " ".join(f"{s:.3f}" for s in shares),
                             "verdict": rule(shares)})

    def done(self, reported: tuple[str, ...] = ()) -> list[dict]:
        for h, vs in self.verdicts.items():
            verdict = "reported" if h in reported else combine(vs)
            self.rows.append({"hypothesis": h, "comparison": "verdict", "verdict": verdict})
        return self.rows


def smollm2_gsm8k_claims(base: BaseEval, results: list[RunResult]) -> list[dict]:
    """(a)-(d) of docs/preregistration_smollm2_gsm8k.md."""
    c = Claims(base, results)
    c.compare("a", "rl - base, accuracy within +-0.02", "rl", "base", "accuracy",
              rule=lambda r: unmoved(r, ACCURACY_MARGIN))
    c.compare("a", "rl - base, answered within +-0.05", "rl", "base", "answered",
              rule=lambda r: unmoved(r, ANSWERED_MARGIN))
    for metric in ("accuracy", "answered"):
        c.compare("b", f"relift > base ({metric})", "relift", "base", metric)
        c.compare("b", f"relift > rl ({metric})", "relift", "rl", metric)
    relift = c.by.get("relift", [])
    c.share("c", f"relift's demos / questions it sampled < {MINORITY:.0%}, every seed",
            [r.demos_used_unique / max(r.questions_seen, 1) for r in relift],
            lambda s: "holds" if max(s) < MINORITY else
            "does not hold" if min(s) >= MINORITY else "inconclusive")
    c.share("c'", "relift's demos / all training demos (reported)",
            [r.demos_used_unique / max(r.demos_available, 1) for r in relift],
            lambda s: "reported")
    for other in ("sft", "sft_then_rl"):
        for metric in ("accuracy", "answered"):
            c.compare("d", f"relift - {other} ({metric})", "relift", other, metric,
                      rule=lambda r: "reported")
    return c.done(reported=("c'", "d"))


def smollm2_toy_claims(base: BaseEval, results: list[RunResult]) -> list[dict]:
    """T1-T4 of docs/preregistration_smollm2_gsm8k.md: the toy's findings, on SmolLM2."""
    c = Claims(base, results)
    buckets: dict[str, list[str]] = {}
    for qid, p in base.pass_rates.items():
        buckets.setdefault(bucket_of(p), []).append(qid)
    mid = sorted(buckets.get("medium", []) + buckets.get("hard", []))
    hardest = sorted(buckets.get("hardest", []))
    c.compare("T1", f"rl > base on medium+hard ({len(mid)} questions)", "rl", "base",
              "accuracy", qids=mid)
    c.compare("T2", f"relift > rl on hardest ({len(hardest)} questions)", "relift", "rl",
              "accuracy", qids=hardest)
    c.compare("T3", "sft > relift (overall)", "sft", "relift", "accuracy")
    c.share("T4", f"relift's demos / all training demos <= {SMALL_SHARE:.0%}, every seed",
            [r.demos_used_unique / max(r.demos_available, 1) for r in c.by.get("relift", [])],
            lambda s: "holds" if max(s) <= SMALL_SHARE else "does not hold")
    return c.done()


def smollm2_gsm8k_lora_claims(base: BaseEval, results: list[RunResult]) -> list[dict]:
    """L1-L2 of docs/lora.md, stated before the runs: ReLIFT on LoRA adapters raises the share
    of readable answers above the base model's (L1), and its greedy accuracy is level with
    the full fine-tune's (L2); the rest of relift_lora against relift, and relift against the
    base model, reported beside them (R)."""
    c = Claims(base, results)
    c.compare("L1", "relift_lora > base (answered)", "relift_lora", "base", "answered")
    c.compare("L2", "relift_lora - relift (accuracy), level: contains 0", "relift_lora",
              "relift", "accuracy", rule=level)
    reported = lambda r: "reported"  # noqa: E731
    c.compare("R", "relift_lora - relift (answered)", "relift_lora", "relift", "answered",
              rule=reported)
    for metric in ("accuracy", "answered"):
        c.compare("R", f"relift - base ({metric})", "relift", "base", metric, rule=reported)
    return c.done(reported=("R",))


CLAIMS = {"smollm2_gsm8k": smollm2_gsm8k_claims, "smollm2_toy": smollm2_toy_claims,
          "smollm2_gsm8k_lora": smollm2_gsm8k_lora_claims}
# where each claim set is written down (the report's title names it)
CLAIMS_SOURCE = {"smollm2_gsm8k": "docs/preregistration_smollm2_gsm8k.md",
                 "smollm2_toy": "docs/preregistration_smollm2_gsm8k.md",
                 "smollm2_gsm8k_lora": "docs/lora.md"}


def format_rows(rows: list[dict], title: str) -> str:
    lines = [title]
    for r in rows:
        if r["comparison"] == "verdict":
            lines.append(f"  {r['hypothesis']} verdict: {r['verdict'].upper()}")
        elif "difference" in r:
            lines.append(f"  {r['hypothesis']:<3} {r['comparison']:<52} {r['difference']:+.3f} "
                         f"[{r['low']:+.3f}, {r['high']:+.3f}] seeds {r['seeds']}  "
                         f"{r['verdict']}")
        else:
            lines.append(f"  {r['hypothesis']:<3} {r['comparison']:<52} {r['verdict']}")
    return "\n".join(lines)
