"""The comparison job's report: tables, the pre-registered claims' verdicts and figures.

From the base model's evaluation and each run's result (relift_ray.jobs.in_process):
``method_table`` (accuracy per level, greedy and avg@k, mean / std / 95% t interval over
seeds, demonstrations used), ``bucket_gains`` (the paper's analysis: gains on the test
questions bucketed by the base model's pass rate), ``claims`` (docs/preregistration_toy_claims.md,
each with a verdict from 95% Welch intervals), ``write_figure`` / ``write_diagnostics`` (PNG),
and ``write_report``: all of it into the run's folder and its MLflow parent run.
``redraw(out_dir)`` makes the figures again from ``results.json`` alone.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from relift_ray.core.questions import BUCKETS, bucket_of
from relift_ray.core.stats import ci95, mean_std, welch
from relift_ray.jobs.compare_claims import CLAIMS, CLAIMS_SOURCE, combine, format_rows
from relift_ray.records import BaseEval, RunResult
from relift_ray.tracking.tracker import write_csv


def _buckets(base: BaseEval) -> dict[str, list[str]]:
    return {b: [qid for qid, p in base.pass_rates.items() if bucket_of(p) == b]
            for b in BUCKETS}


def run_gain(base: BaseEval, r: RunResult, qids: list[str]) -> float:
    """One run's mean (avg@k - base avg@k) over ``qids`` (greedy when no avg@k was made)."""
    scores = r.sampled_scores or r.greedy_scores
    ref = base.sampled_scores if r.sampled_scores else base.greedy_scores
    return statistics.fmean(scores[q] - ref[q] for q in qids)


def bucket_gains(base: BaseEval, results: list[RunResult]) -> dict[str, dict[str, float]]:
    """{method: {bucket: mean over seeds of (method's avg@k - base avg@k) on that bucket}}."""
    buckets = _buckets(base)
    per_method: dict[str, dict[str, list]] = {}
    for r in results:
        for b, qids in buckets.items():
            if qids:
                per_method.setdefault(r.method, {}).setdefault(b, []).append(
                    run_gain(base, r, qids))
    return {m: {b: statistics.fmean(v) for b, v in d.items()} for m, d in per_method.items()} | {
        "_counts": {b: len(q) for b, q in buckets.items()}}


def method_table(base: BaseEval, results: list[RunResult], methods: list[str]) -> list[dict]:
    """One row per method: mean and std over seeds of every figure the table reports."""
    levels = [k for k in base.greedy if k != "overall"]
    as_run = RunResult(name="base", mode="", seed=0, history=[], curve=[base.profile],
                       greedy=base.greedy, greedy_scores=base.greedy_scores,
                       sampled=base.sampled, sampled_scores=base.sampled_scores)
    rows = [_row("base", [as_run], levels)]
    for m in methods:
        runs = [r for r in results if r.method == m]
        if runs:
            rows.append(_row(m, runs, levels))
    return rows


def _row(name: str, runs: list[RunResult], levels: list[str]) -> dict:
    row = {"method": name, "seeds": len(runs)}

    def put(key, values):
        row[key], row[f"{key}_std"] = mean_std(values)
        row[f"{key}_ci95"] = ci95(values)

    for kind in ("greedy", "sampled"):
        for key in ["overall", *levels]:
            put(f"{kind}_{key}", [getattr(r, kind).get(key, float("nan")) for r in runs])
    for key in ("demos_used_unique", "demos_used_total", "learner_updates", "sft_steps",
                "wall_seconds"):
        put(key, [getattr(r, key) for r in runs])
    for key in ("response_length", "truncated", "entropy", "answered"):  # final, greedy, test
        put(key, [r.curve[-1].get(key, float("nan")) for r in runs])
    avail = runs[0].demos_available
    row["demos_available"] = avail
    row["demos_share"] = row["demos_used_unique"] / avail if avail else 0.0
    return row


def method_table_text(rows: list[dict], gains: dict, eval_k: int) -> str:
    levels = sorted({k[len("greedy_"):] for k in rows[0] if k.startswith("greedy_level_")
                     and not k.endswith(("_std", "_ci95"))})
    head = (f"{'method':<20}{'overall':>14}" + "".join(f"{lv.replace('level_', 'L'):>13}"
                                                     for lv in levels)
            + f"{'avg@' + str(eval_k):>14}{'demos uniq':>12}{'total':>8}{'share':>7}"
            + f"{'updates':>9}{'wall s':>8}")
    head += f"{'length':>8}{'cut':>6}{'entropy':>8}{'answer':>8}"
    lines = ["test accuracy, greedy (mean ± half-width of the 95% t interval over seeds); "
             "avg@k at temperature 0.6; the final policy's greedy test responses: mean length "
             "(tokens), share cut at the budget, mean token entropy (nan: not measured with a "
             "vLLM generator), share with a final answer the verifier could read", head,
             "-" * len(head)]
    for r in rows:
        cell = lambda k: f"{r[k]:.3f}±{r[k + '_ci95']:.3f}"  # noqa: E731
        lines.append(f"{r['method']:<20}{cell('greedy_overall'):>14}"
                     + "".join(f"{cell('greedy_' + lv):>13}" for lv in levels)
                     + f"{cell('sampled_overall'):>14}{r['demos_used_unique']:>12.0f}"
                     + f"{r['demos_used_total']:>8.0f}{r['demos_share']:>7.1%}"
                     + f"{r['learner_updates']:>9.0f}{r['wall_seconds']:>8.0f}"
                     + f"{r['response_length']:>8.1f}{r['truncated']:>6.1%}{r['entropy']:>8.3f}"
                     + f"{r['answered']:>8.1%}")
    counts = gains.get("_counts", {})
    lines += ["", "gain over the base model per bucket of test questions (avg@k, mean over seeds);"
              " buckets by the base model's pass rate",
              f"{'method':<20}" + "".join(f"{b + ' (' + str(counts.get(b, 0)) + ')':>16}"
                                          for b in BUCKETS)]
    for m, g in gains.items():
        if m != "_counts":
            lines.append(f"{m:<20}" + "".join(f"{g.get(b, float('nan')):>+16.3f}" for b in BUCKETS))
    return "\n".join(lines)


SHARE_LIMIT = 0.20  # H4: ReLIFT uses at most this share of the demonstrations, in every seed


def _verdict(lo: float, hi: float) -> str:
    return "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"  # nan: neither


def claims(base: BaseEval, results: list[RunResult]) -> list[dict]:
    """The hypotheses of docs/preregistration_toy_claims.md, each comparison with its 95%
    interval and verdict, then one combined row per hypothesis. "A > B" holds when the Welch
    interval of mean(A) - mean(B) over seeds lies above 0, does not hold when it lies below,
    and is inconclusive otherwise; "not run" when a method it needs is missing."""
    by = {}
    for r in results:
        by.setdefault(r.method, []).append(r)
    overall = {m: [r.greedy["overall"] for r in rs] for m, rs in by.items()}
    rows: list[dict] = []

    def compare(h: str, what: str, a: list | None, b: list | None, sign: int = 1) -> str:
        if a is None or b is None or not a:
            rows.append({"hypothesis": h, "comparison": what, "verdict": "not run"})
            return "not run"
        d, lo, hi = welch(a, b)
        v = _verdict(lo, hi) if sign > 0 else _verdict(-hi, -lo)  # "A < B": B - A > 0
        rows.append({"hypothesis": h, "comparison": what, "difference": d, "low": lo,
                     "high": hi, "verdict": v})
        return v

    g = overall.get
    h1 = [compare("H1", "relift > sft_then_rl (overall)", g("relift"), g("sft_then_rl")),
          compare("H1", "sft_then_rl > sft (overall)", g("sft_then_rl"), g("sft")),
          compare("H1", "sft > rl (overall)", g("sft"), g("rl"))]
    buckets = _buckets(base)
    mid = buckets["medium"] + buckets["hard"]
    gain = lambda m, qids: ([run_gain(base, r, qids) for r in by[m]]  # noqa: E731
                            if m in by and qids else None)
    h2 = [compare("H2", "rl's gain on medium+hard > 0", gain("rl", mid), []),
          compare("H2", "sft's gain on hardest > rl's", gain("sft", buckets["hardest"]),
                  gain("rl", buckets["hardest"]))]
    length = {m: [r.curve[-1].get("response_length", float("nan")) for r in rs]
              for m, rs in by.items()}
    h3 = [compare("H3", "relift's test responses shorter than sft's", length.get("relift"),
                  length.get("sft"), sign=-1)]
    if "relift" in by:
        shares = [r.demos_used_unique / max(r.demos_available, 1) for r in by["relift"]]
        v4 = "holds" if max(shares) <= SHARE_LIMIT else "does not hold"
        rows.append({"hypothesis": "H4", "comparison": f"relift's demo share <= "
                     f"{SHARE_LIMIT:.0%} in every seed", "difference": statistics.fmean(shares),
                     "low": min(shares), "high": max(shares), "verdict": v4})
    else:
        v4 = "not run"
        rows.append({"hypothesis": "H4", "comparison": "relift's demonstration share",
                     "verdict": v4})
    h5 = [compare("H5", "relift > sft_matched_random (overall)", g("relift"),
                  g("sft_matched_random")),
          compare("H5", "relift > sft_matched_hardest (overall)", g("relift"),
                  g("sft_matched_hardest"))]
    for h, vs in (("H1", h1), ("H2", h2), ("H3", h3), ("H4", [v4]), ("H5", h5)):
        rows.append({"hypothesis": h, "comparison": "verdict", "verdict": combine(vs)})
    return rows


def format_claims(rows: list[dict]) -> str:
    lines = ["the pre-registered claims (docs/preregistration_toy_claims.md): difference of "
             "the seed means [95% Welch interval; nan with fewer than 2 seeds] (H3: relift - "
             "sft; H4: mean share [lowest, highest])"]
    for r in rows:
        if r["comparison"] == "verdict":
            lines.append(f"  {r['hypothesis']} verdict: {r['verdict'].upper()}")
        elif "difference" in r:
            lines.append(f"  {r['hypothesis']}  {r['comparison']:<46} {r['difference']:+.3f} "
                         f"[{r['low']:+.3f}, {r['high']:+.3f}]  {r['verdict']}")
        else:
            lines.append(f"  {r['hypothesis']}  {r['comparison']:<46} {r['verdict']}")
    return "\n".join(lines)


def write_figure(path: Path, base: BaseEval, results: list[RunResult], methods: list[str],
                 hardest_level: str) -> None:
    # matplotlib: only to draw
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # once the backend is chosen

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, m in enumerate(methods):
        runs = [r for r in results if r.method == m]
        if not runs:
            continue
        steps = [p["step"] for p in runs[0].curve]
        for ax, key in ((axes[0], "overall"), (axes[1], hardest_level)):
            ys = [statistics.fmean(r.curve[i].get(key, 0.0) for r in runs)
                  for i in range(len(steps))]
            ax.plot(steps, ys, marker="o", ms=3, label=m, color=f"C{i % 10}",
                    lw=2.5 if m == "relift" else 1.2)
    axes[0].set_title("test accuracy (greedy), overall")
    axes[1].set_title(f"test accuracy (greedy), {hardest_level.replace('_', ' ')}")
    for ax in axes[:2]:
        ax.set_xlabel("learner step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    relift = sorted((r for r in results if r.method == "relift"), key=lambda r: r.seed)
    if relift:
        r = relift[0]
        steps = [h["step"] for h in r.history]
        axes[2].plot(steps, [h["buffer_size"] for h in r.history], color="C3",
                     label="buffer size")
        sft = [h["step"] for h in r.history if h["sft_this_step"]]
        for i, s in enumerate(sft):
            axes[2].axvline(s, color="k", alpha=0.3, lw=1, label="SFT step" if i == 0 else None)
        axes[2].set_title(f"ReLIFT hard buffer (seed {r.seed}), SFT events marked")
        axes[2].set_xlabel("learner step")
        axes[2].legend(fontsize=8)
        axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_diagnostics(path: Path, results: list[RunResult], methods: list[str]) -> None:
    """The paper's training diagnostics per method (mean over seeds): reward, response length
    and entropy of the rollouts over learner steps; the test responses' length, entropy,
    truncation and readable answers at each evaluation; when SFT updates ran."""
    # matplotlib: only to draw
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # once the backend is chosen

    keys = (("history", "reward_mean", "training reward (rollouts)"),
            ("history", "response_length", "rollout response length (tokens)"),
            ("history", "rl/entropy", "rollout entropy"),
            ("curve", "response_length", "test response length (greedy, tokens)"),
            ("curve", "entropy", "policy entropy on its greedy test responses"),
            ("curve", "truncated", "test responses cut at the budget (share)"),
            ("curve", "answered", "test answers the verifier could read (share)"),
            ("history", "sft_this_step", "SFT updates (share of seeds, per step)"))
    fig, axes = plt.subplots(2, 4, figsize=(22, 9))
    axes = axes.ravel()
    for i, m in enumerate(methods):
        runs = [r for r in results if r.method == m]
        for ax, (where, key, title) in zip(axes, keys):
            points = {}
            for r in runs:
                for h in getattr(r, where):
                    if key in h:
                        points.setdefault(h["step"], []).append(h[key])
            if points:
                steps = sorted(points)
                ax.plot(steps, [statistics.fmean(points[s]) for s in steps], label=m,
                        color=f"C{i % 10}", lw=2.5 if m == "relift" else 1.0)
                ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("learner step")
        ax.grid(alpha=0.3)
    labels = {}  # every method once (the SFT-only ones have no rollout curves)
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lab, h)
    fig.legend(list(labels.values()), list(labels), loc="upper center", ncol=len(labels),
               fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


KEPT = ("name", "method", "seed", "mode", "history", "curve", "greedy", "sampled",
        "greedy_scores", "sampled_scores", "sft_steps", "demos_used_unique", "demos_used_ids",
        "demos_used_total", "demos_available", "learner_updates", "wall_seconds",
        "answered_ids", "questions_seen")


def save_results(path: Path, base: BaseEval, results: list[RunResult],
                 methods: list[str]) -> None:
    """Everything the tables and figures are made of (not the per-question training records),
    so they can be redrawn without the runs: ``redraw(out_dir)``."""
    path.write_text(json.dumps({"methods": list(methods), "base": asdict(base),
                                "results": [{k: getattr(r, k) for k in KEPT}
                                            for r in results]}))


def redraw(out_dir: str | Path) -> None:
    """compare.png and diagnostics.png again from ``<out_dir>/results.json``."""
    out_dir = Path(out_dir)
    d = json.loads((out_dir / "results.json").read_text())
    base, results = BaseEval(**d["base"]), [RunResult(**r) for r in d["results"]]
    levels = sorted(k for k in base.greedy if k.startswith("level_"))
    write_figure(out_dir / "compare.png", base, results, d["methods"], levels[-1])
    write_diagnostics(out_dir / "diagnostics.png", results, d["methods"])



def write_report(out_dir: Path, tracker, base: BaseEval, results: list[RunResult],
                 failed: list[str], methods: list[str], eval_k: int,
                 claims_kind: str = "toy") -> tuple[list[dict], dict, str]:
    """The tables (csv and text), claims (``claims_kind``: compare.claims), figures and
    results.json in ``out_dir`` and as the MLflow parent run's artifacts and metrics;
    returns (table rows, bucket gains, text)."""

    rows = method_table(base, results, methods)
    gains = bucket_gains(base, results)
    text = method_table_text(rows, gains, eval_k)
    claim_rows: list[dict] = []
    if claims_kind == "toy":
        claim_rows = claims(base, results)
        text += "\n\n" + format_claims(claim_rows)
    elif claims_kind != "none":
        claim_rows = CLAIMS[claims_kind](base, results)
        text += "\n\n" + format_rows(claim_rows, (
            f"the pre-registered claims ({CLAIMS_SOURCE[claims_kind]}): the mean over "
            "test questions of the per-question difference averaged over seeds [95% bootstrap "
            "interval over questions], each seed's difference, verdict"))
    if failed:
        text += f"\n\nFAILED runs (left out of the table): {', '.join(failed)}"
    files = {"compare_table.csv": rows, "compare_runs.csv": _run_rows(results, methods),
             "claims.csv": claim_rows, "bucket_gains.csv": _gain_rows(gains),
             "curves.csv": [{"method": r.method, "seed": r.seed, **p}
                            for r in results for p in r.curve]}
    for name, table in files.items():
        write_csv(table, out_dir / name)
        tracker.mlflow.log_artifact(str(out_dir / name))
    levels = sorted(k for k in base.greedy if k.startswith("level_"))
    write_figure(out_dir / "compare.png", base, results, methods, levels[-1])
    write_diagnostics(out_dir / "diagnostics.png", results, methods)
    save_results(out_dir / "results.json", base, results, methods)
    for name in ("compare.png", "results.json", "diagnostics.png"):
        tracker.mlflow.log_artifact(str(out_dir / name))
    (out_dir / "compare_table.txt").write_text(text + "\n")
    tracker.mlflow.log_text(text, "compare_table.txt")
    for row in rows:
        tracker.log_metrics({f"{row['method']}/{k}": v for k, v in row.items()
                             if isinstance(v, float)})
    return rows, gains, text


def _run_rows(results: list[RunResult], methods: list[str]) -> list[dict]:
    """compare_runs.csv: one row per (method, seed), in the table's order."""
    return [{"method": r.method, "seed": r.seed,
             **{f"greedy_{k}": v for k, v in r.greedy.items()},
             **{f"sampled_{k}": v for k, v in r.sampled.items()},
             **{k: getattr(r, k) for k in ("demos_used_unique", "demos_used_total",
                                          "demos_available",
                                  "learner_updates", "sft_steps", "wall_seconds")},
             **{k: r.curve[-1].get(k) for k in ("response_length", "truncated", "entropy",
                                                "answered")}}
            for r in sorted(results, key=lambda r: (methods.index(r.method), r.seed))]


def _gain_rows(gains: dict) -> list[dict]:
    """bucket_gains.csv: one row per method, and the questions in each bucket."""
    rows = [{"method": m, **{b: g.get(b) for b in BUCKETS}}
            for m, g in gains.items() if m != "_counts"]
    return rows + [{"method": "questions", **gains["_counts"]}]
