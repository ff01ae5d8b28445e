"""The comparison job: RL, SFT, SFT-then-RL, ReLIFT and the paper's ablations side by side.

Every method starts from the same base model and runs the same number of learner steps
(``train.steps``) with the same seeds; each (method, seed) is one Ray task running a whole
colocated run (``relift_ray.colocated``), ``compare.parallel`` of them at once. Then:

- test accuracy per level and overall, greedy and avg@k at temperature 0.6, on the held-out
  split, as mean and spread (sample std) over seeds;
- demonstrations used (unique, total, share of all available), learner updates, wall time;
- the paper's bucket analysis: test questions bucketed by the base model's pass rate over
  N samples (Easy >= 6/8, Medium 3-5/8, Hard 1-2/8, Hardest 0/8), each method's gain per bucket;
- the test responses' length, share cut at the budget and the policy's entropy over them, at
  every evaluation point (SFT included);
- controls for ReLIFT's demonstrations: offline SFT on as many demonstrations as ReLIFT used
  in the same seed (``sft_matched_random``) or on exactly those (``sft_matched_hardest``),
  started when that ReLIFT run ends;
- the paper's claims as pre-registered (docs/preregistration_toy_claims.md), each with a
  verdict from 95% Welch intervals over seeds (``claims``);
- MLflow: one parent run, one child run per (method, seed) with its config, per-step metrics
  and accuracy curve; the tables and the figure as the parent's artifacts;
- CSV files and a PNG figure in ``<output_dir>/<name>/``.

    relift compare --config jobs/configs/compare_toy.yaml compare.seeds=1,2,3
"""
from __future__ import annotations

import copy
import math
import random
import statistics
import time
from pathlib import Path

from relift_ray.config import RunConfig, validate
from relift_ray.scheduler import BUCKETS, bucket_of

# What each method changes in the run's config (everything else is shared).
METHODS: dict[str, dict] = {
    "rl": {"mode": "rl"},  # RL only: no buffer, no SFT
    "sft": {"mode": "sft"},  # offline SFT over all demonstrations
    "sft_then_rl": {"mode": "sft_then_rl"},  # SFT for a share of the steps, then RL
    "relift": {"mode": "relift"},  # the released algorithm
    # the paper's ablations
    "sft_every_k": {"mode": "relift", "sft_trigger": "every_k"},  # fixed SFT schedule
    "non_hardest_buffer": {"mode": "relift", "buffer_feed": "non_hardest"},
    "sft_every_step": {"mode": "relift", "sft_trigger": "every_step"},
    "mixed": {"mode": "mixed"},  # RL loss + SFT loss on the step's hardest, every step
    # asynchronous rollouts: each batch sampled with weights one version behind the learner
    "relift_async": {"mode": "relift", "max_staleness": 1},
    "rl_async": {"mode": "rl", "max_staleness": 1},
    # controls for ReLIFT's demonstrations: offline SFT on as many as ReLIFT used in the same
    # seed, a random subset / exactly those (the same steps and SFT batch size as `sft`)
    "sft_matched_random": {"mode": "sft"},
    "sft_matched_hardest": {"mode": "sft"},
}
MATCHED = ("sft_matched_random", "sft_matched_hardest")  # they wait for relift's run


def matched_questions(method: str, train_qs: list, relift_ids, seed: int) -> list:
    """The training questions of a matched control: only those whose demonstration it trains
    on (offline SFT samples from the questions with a demonstration)."""
    with_demo = [q for q in train_qs if q.demo]
    if method == "sft_matched_hardest":
        ids = set(relift_ids)
        return [q for q in with_demo if q.id in ids]
    if method == "sft_matched_random":
        picked = set(random.Random(seed).sample(range(len(with_demo)), len(relift_ids)))
        return [q for i, q in enumerate(with_demo) if i in picked]
    raise ValueError(f"{method} is not a matched control ({', '.join(MATCHED)})")


def method_config(cfg: RunConfig, method: str, seed: int) -> RunConfig:
    if method not in METHODS:
        from relift_ray.config import ConfigError
        raise ConfigError(f"compare.methods: unknown method {method!r} "
                          f"(known: {', '.join(METHODS)})")
    out = copy.deepcopy(cfg)
    for key, value in METHODS[method].items():
        setattr(out.algo, key, value)
    if method == "sft_then_rl":
        out.algo.sft_first_steps = max(1, round(cfg.train.steps * cfg.compare.sft_then_rl_fraction))
    out.train.seed = seed
    out.name = f"{cfg.name}-{method}-s{seed}"
    out.cluster.num_learners = 1
    return validate(out)


# ------------------------------------------------------------------ the Ray tasks

def _run_task(cfg_dict: dict, model_path: str, train_qs, test_qs, eval_every: int,
              eval_k: int, threads: int) -> dict:
    from relift_ray.colocated import run_colocated
    from relift_ray.imports import skip_unused_modules
    skip_unused_modules()
    cfg = RunConfig.from_dict(cfg_dict)
    return run_colocated(cfg, model_path, train_qs, test_qs, eval_every=eval_every,
                         eval_k=eval_k, threads=threads)


def _base_task(cfg_dict: dict, model_path: str, test_qs, eval_k: int, n_bucket: int,
               threads: int) -> dict:
    """The base model on the test split: greedy, avg@k at 0.6, and its pass rate over N samples
    at the training temperature (what the buckets are made of)."""
    import torch

    from relift_ray.imports import skip_unused_modules
    skip_unused_modules()

    from relift_ray.colocated import device_of, greedy_profile, test_accuracy
    from relift_ray.evaluation import question_scores
    from relift_ray.generators.hf import HFGenerator
    from relift_ray.rewards import RewardWorker

    cfg = RunConfig.from_dict(cfg_dict)
    torch.set_num_threads(threads)
    rewarder = RewardWorker(cfg.data.answer_extraction, cfg.cluster.reward_timeout_s)
    try:
        gen = HFGenerator(model_path, device=device_of(cfg), dtype=cfg.model.dtype)
        t = cfg.algo.max_new_tokens
        pass_rates = question_scores([gen], [rewarder], test_qs, n=n_bucket,
                                     temperature=cfg.algo.temperature, max_new_tokens=t, seed=1)
        greedy_scores, profile = greedy_profile(gen, rewarder, test_qs, t)
        return {**test_accuracy(gen, rewarder, test_qs, t, eval_k, seed=0,
                                greedy_scores=greedy_scores),
                "pass_rates": pass_rates, "profile": profile}
    finally:
        rewarder.close()


# ------------------------------------------------------------------ aggregation

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


def _buckets(base: dict) -> dict[str, list[str]]:
    return {b: [qid for qid, p in base["pass_rates"].items() if bucket_of(p) == b]
            for b in BUCKETS}


def run_gain(base: dict, r: dict, qids: list[str]) -> float:
    """One run's mean (avg@k - base avg@k) over ``qids`` (greedy when no avg@k was made)."""
    scores = r["sampled_scores"] or r["greedy_scores"]
    ref = base["sampled_scores"] if r["sampled_scores"] else base["greedy_scores"]
    return statistics.fmean(scores[q] - ref[q] for q in qids)


def bucket_gains(base: dict, results: list[dict]) -> dict[str, dict[str, float]]:
    """{method: {bucket: mean over seeds of (method's avg@k - base avg@k) on that bucket}}."""
    buckets = _buckets(base)
    per_method: dict[str, dict[str, list]] = {}
    for r in results:
        for b, qids in buckets.items():
            if qids:
                per_method.setdefault(r["method"], {}).setdefault(b, []).append(
                    run_gain(base, r, qids))
    return {m: {b: statistics.fmean(v) for b, v in d.items()} for m, d in per_method.items()} | {
        "_counts": {b: len(q) for b, q in buckets.items()}}


def method_table(base: dict, results: list[dict], methods: list[str]) -> list[dict]:
    """One row per method: mean and std over seeds of every figure the table reports."""
    levels = [k for k in base["greedy"] if k != "overall"]
    rows = [_row("base", [{"greedy": base["greedy"], "sampled": base["sampled"],
                           "demos_used_unique": 0, "demos_used_total": 0, "demos_available": 0,
                           "learner_updates": 0, "sft_steps": 0, "wall_seconds": 0.0,
                           "curve": [base.get("profile", {})]}], levels)]
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        if runs:
            rows.append(_row(m, runs, levels))
    return rows


def _row(name: str, runs: list[dict], levels: list[str]) -> dict:
    row = {"method": name, "seeds": len(runs)}

    def put(key, values):
        row[key], row[f"{key}_std"] = mean_std(values)
        row[f"{key}_ci95"] = ci95(values)

    for kind in ("greedy", "sampled"):
        for key in ["overall", *levels]:
            put(f"{kind}_{key}", [r[kind].get(key, float("nan")) for r in runs])
    for key in ("demos_used_unique", "demos_used_total", "learner_updates", "sft_steps",
                "wall_seconds"):
        put(key, [r[key] for r in runs])
    for key in ("response_length", "truncated", "entropy"):  # the final policy's, greedy, test
        put(key, [r["curve"][-1].get(key, float("nan")) for r in runs])
    avail = runs[0]["demos_available"]
    row["demos_available"] = avail
    row["demos_share"] = row["demos_used_unique"] / avail if avail else 0.0
    return row


def format_table(rows: list[dict], gains: dict, eval_k: int) -> str:
    levels = sorted({k[len("greedy_"):] for k in rows[0] if k.startswith("greedy_level_")
                     and not k.endswith(("_std", "_ci95"))})
    head = (f"{'method':<20}{'overall':>14}" + "".join(f"{lv.replace('level_', 'L'):>13}"
                                                     for lv in levels)
            + f"{'avg@' + str(eval_k):>14}{'demos uniq':>12}{'total':>8}{'share':>7}"
            + f"{'updates':>9}{'wall s':>8}")
    head += f"{'length':>8}{'cut':>6}{'entropy':>8}"
    lines = ["test accuracy, greedy (mean ± half-width of the 95% t interval over seeds); "
             "avg@k at temperature 0.6; the final policy's greedy test responses: mean length "
             "(tokens), share cut at the budget, mean token entropy", head, "-" * len(head)]
    for r in rows:
        cell = lambda k: f"{r[k]:.3f}±{r[k + '_ci95']:.3f}"  # noqa: E731
        lines.append(f"{r['method']:<20}{cell('greedy_overall'):>14}"
                     + "".join(f"{cell('greedy_' + lv):>13}" for lv in levels)
                     + f"{cell('sampled_overall'):>14}{r['demos_used_unique']:>12.0f}"
                     + f"{r['demos_used_total']:>8.0f}{r['demos_share']:>7.1%}"
                     + f"{r['learner_updates']:>9.0f}{r['wall_seconds']:>8.0f}"
                     + f"{r['response_length']:>8.1f}{r['truncated']:>6.1%}{r['entropy']:>8.3f}")
    counts = gains.get("_counts", {})
    lines += ["", "gain over the base model per bucket of test questions (avg@k, mean over seeds);"
              " buckets by the base model's pass rate",
              f"{'method':<20}" + "".join(f"{b + ' (' + str(counts.get(b, 0)) + ')':>16}"
                                          for b in BUCKETS)]
    for m, g in gains.items():
        if m != "_counts":
            lines.append(f"{m:<20}" + "".join(f"{g.get(b, float('nan')):>+16.3f}" for b in BUCKETS))
    return "\n".join(lines)


# ------------------------------------------------------------------ the pre-registered claims

SHARE_LIMIT = 0.20  # H4: ReLIFT uses at most this share of the demonstrations, in every seed


def _verdict(lo: float, hi: float) -> str:
    return "holds" if lo > 0 else "does not hold" if hi < 0 else "inconclusive"  # nan: neither


def _combine(verdicts: list[str]) -> str:
    if "not run" in verdicts:
        return "not run"
    if "does not hold" in verdicts:
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def claims(base: dict, results: list[dict]) -> list[dict]:
    """The hypotheses of docs/preregistration_toy_claims.md, each comparison with its 95%
    interval and verdict, then one combined row per hypothesis. "A > B" holds when the Welch
    interval of mean(A) - mean(B) over seeds lies above 0, does not hold when it lies below,
    and is inconclusive otherwise; "not run" when a method it needs is missing."""
    by = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    overall = {m: [r["greedy"]["overall"] for r in rs] for m, rs in by.items()}
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
    length = {m: [r["curve"][-1].get("response_length", float("nan")) for r in rs]
              for m, rs in by.items()}
    h3 = [compare("H3", "relift's test responses shorter than sft's", length.get("relift"),
                  length.get("sft"), sign=-1)]
    if "relift" in by:
        shares = [r["demos_used_unique"] / max(r["demos_available"], 1) for r in by["relift"]]
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
        rows.append({"hypothesis": h, "comparison": "verdict", "verdict": _combine(vs)})
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


# ------------------------------------------------------------------ outputs

def write_figure(path: Path, base: dict, results: list[dict], methods: list[str],
                 hardest_level: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, m in enumerate(methods):
        runs = [r for r in results if r["method"] == m]
        if not runs:
            continue
        steps = [p["step"] for p in runs[0]["curve"]]
        for ax, key in ((axes[0], "overall"), (axes[1], hardest_level)):
            ys = [statistics.fmean(r["curve"][i].get(key, 0.0) for r in runs)
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
    relift = sorted((r for r in results if r["method"] == "relift"), key=lambda r: r["seed"])
    if relift:
        r = relift[0]
        steps = [h["step"] for h in r["history"]]
        axes[2].plot(steps, [h["buffer_size"] for h in r["history"]], color="C3",
                     label="buffer size")
        sft = [h["step"] for h in r["history"] if h["sft_this_step"]]
        for i, s in enumerate(sft):
            axes[2].axvline(s, color="k", alpha=0.3, lw=1, label="SFT step" if i == 0 else None)
        axes[2].set_title(f"ReLIFT hard buffer (seed {r['seed']}), SFT events marked")
        axes[2].set_xlabel("learner step")
        axes[2].legend(fontsize=8)
        axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_diagnostics(path: Path, results: list[dict], methods: list[str]) -> None:
    """The paper's training diagnostics per method (mean over seeds): reward, response length
    and entropy of the rollouts over learner steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("history", "reward_mean", "training reward (rollouts)"),
            ("history", "response_length", "rollout response length (tokens)"),
            ("history", "rl/entropy", "rollout entropy"),
            ("curve", "response_length", "test response length (greedy, tokens)"),
            ("curve", "entropy", "policy entropy on its greedy test responses"),
            ("curve", "truncated", "test responses cut at the budget (share)"))
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    axes = axes.ravel()
    for i, m in enumerate(methods):
        runs = [r for r in results if r["method"] == m]
        for ax, (where, key, title) in zip(axes, keys):
            points = {}
            for r in runs:
                for h in r[where]:
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


KEPT = ("method", "seed", "mode", "history", "curve", "greedy", "sampled", "greedy_scores",
        "sampled_scores", "sft_steps", "demos_used_unique", "demos_used_ids", "demos_used_total",
        "demos_available", "learner_updates", "wall_seconds")


def save_results(path: Path, base: dict, results: list[dict], methods: list[str]) -> None:
    """Everything the tables and figures are made of (not the per-question training records),
    so they can be redrawn without the runs: ``redraw(out_dir)``."""
    import json
    path.write_text(json.dumps({"methods": list(methods), "base": base,
                                "results": [{k: r[k] for k in KEPT if k in r}
                                            for r in results]}))


def redraw(out_dir: str | Path) -> None:
    """compare.png and diagnostics.png again from ``<out_dir>/results.json``."""
    import json
    out_dir = Path(out_dir)
    d = json.loads((out_dir / "results.json").read_text())
    levels = sorted(k for k in d["base"]["greedy"] if k.startswith("level_"))
    write_figure(out_dir / "compare.png", d["base"], d["results"], d["methods"], levels[-1])
    write_diagnostics(out_dir / "diagnostics.png", d["results"], d["methods"])


def _log_child(client, experiment_id: str, parent_id: str, cfg: RunConfig, r: dict) -> str:
    from mlflow.entities import Metric, Param

    from relift_ray.tracking import _clean

    run = client.create_run(experiment_id, run_name=cfg.name,
                            tags={"mlflow.parentRunId": parent_id, "method": r["method"],
                                  "seed": str(r["seed"]), "mode": cfg.algo.mode})
    rid = run.info.run_id
    params = [Param(k, str(v)[:500]) for k, v in cfg.flat().items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i:i + 100])
    client.log_text(rid, cfg.to_yaml(), "config.yaml")
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, h["step"]) for h in r["history"] for k, v in _clean(h).items()
               if k != "step"]
    metrics += [Metric(f"test_greedy/{k}", v, now, p["step"]) for p in r["curve"]
                for k, v in p.items() if k != "step"]
    final = {**{f"final_greedy/{k}": v for k, v in r["greedy"].items()},
             **{f"final_avg_at_k/{k}": v for k, v in r["sampled"].items()},
             **{k: r[k] for k in ("demos_used_unique", "demos_used_total", "demos_available",
                                  "learner_updates", "sft_steps", "wall_seconds")}}
    metrics += [Metric(k, float(v), now, cfg.train.steps) for k, v in final.items()]
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i:i + 900])
    client.set_terminated(rid, "FINISHED")
    return rid


def run(cfg: RunConfig) -> dict:
    import ray
    from transformers import AutoTokenizer

    from relift_ray.driver import init_ray, load_data, resolve_model
    from relift_ray.tracking import Tracker, write_csv

    t_start = time.time()
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    cc = cfg.compare
    configs = {(m, s): method_config(cfg, m, s) for m in cc.methods for s in cc.seeds}
    out_dir = Path(cfg.output_dir) / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    init_ray(cfg)
    from relift_ray.console import Console
    console = Console.start()  # the runs' progress lines (Ray's own stay in its log files)
    model_path = resolve_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_qs, test_qs, _ = load_data(cfg, tokenizer)
    n_demos = sum(1 for q in train_qs if q.demo)
    n_runs = len(configs)
    print(f"[compare] {len(cc.methods)} methods x {len(cc.seeds)} seeds = {n_runs} runs of "
          f"{cfg.train.steps} steps, {cc.parallel} at a time; {len(train_qs)} training and "
          f"{len(test_qs)} test questions", flush=True)

    tracker = Tracker(cfg.mlflow_uri, cfg.tracking.experiment, cfg.name,
                      tags={"kind": "compare"}, artifact_root=cfg.artifact_root)
    tracker.log_config(cfg)
    status = "FAILED"
    try:
        res = {"num_cpus": cfg.cluster.num_cpus / cc.parallel,
               "num_gpus": 1 if cfg.cluster.use_gpu else 0}
        train_ref, test_ref = ray.put(train_qs), ray.put(test_qs)
        base_ref = ray.remote(_base_task).options(name="compare-base", **res).remote(
            cfg.to_dict(), model_path, test_ref, cc.eval_k, cc.bucket_samples, cc.threads)
        pending = {}

        def submit(m: str, s: int, questions_ref) -> None:
            ref = ray.remote(_run_task).options(name=f"compare-{m}-s{s}", **res).remote(
                configs[(m, s)].to_dict(), model_path, questions_ref, test_ref, cc.eval_every,
                cc.eval_k, cc.threads)
            pending[ref] = (m, s)

        for m, s in configs:
            if m not in MATCHED:  # the matched controls start when relift's run of s ends
                submit(m, s, train_ref)
        base = ray.get(base_ref)
        print(f"[compare] base model: greedy {base['greedy']['overall']:.3f}, "
              f"avg@{cc.eval_k} {base['sampled']['overall']:.3f}", flush=True)
        client = tracker.mlflow.tracking.MlflowClient(cfg.mlflow_uri)
        exp_id = tracker.run.info.experiment_id
        results, failed = [], []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            m, s = pending.pop(done[0])
            waiting = [c for c in MATCHED if (c, s) in configs] if m == "relift" else []
            try:
                r = ray.get(done[0])
            except ray.exceptions.RayError as e:  # one run's crash does not lose the others
                failed += [f"{x} seed {s}" for x in [m, *waiting]]
                print(f"[compare] FAILED: {m} seed {s}: {str(e).strip().splitlines()[-1]}"
                      + (f" (so {', '.join(waiting)} cannot run)" if waiting else ""),
                      flush=True)
                continue
            for c in waiting:
                subset = matched_questions(c, train_qs, r["demos_used_ids"], s)
                if subset:
                    submit(c, s, ray.put(subset))
                else:
                    failed.append(f"{c} seed {s}")
                    print(f"[compare] {c} seed {s} not run: relift used no demonstrations "
                          f"in seed {s}", flush=True)
            r["method"] = m
            if m in MATCHED:  # its share is of every training demonstration, as the others'
                r["demos_available"] = n_demos
            results.append(r)
            r["mlflow_run_id"] = _log_child(client, exp_id, tracker.run_id, configs[(m, s)], r)
            print(f"[compare] {len(results) + len(failed)}/{n_runs} done: {m} seed {s}: greedy "
                  f"{r['greedy']['overall']:.3f}, demos {r['demos_used_unique']}, "
                  f"{r['wall_seconds']:.0f}s ({time.time() - t_start:.0f}s elapsed)", flush=True)

        if not results:
            raise RuntimeError(f"every run failed: {', '.join(failed)}")
        if failed:
            tracker.set_tags({"failed_runs": ", ".join(failed)})
        rows = method_table(base, results, cc.methods)
        gains = bucket_gains(base, results)
        text = format_table(rows, gains, cc.eval_k)
        claim_rows = claims(base, results)
        text += "\n\n" + format_claims(claim_rows)
        if failed:
            text += f"\n\nFAILED runs (left out of the table): {', '.join(failed)}"
        per_run = [{"method": r["method"], "seed": r["seed"],
                    **{f"greedy_{k}": v for k, v in r["greedy"].items()},
                    **{f"sampled_{k}": v for k, v in r["sampled"].items()},
                    **{k: r[k] for k in ("demos_used_unique", "demos_used_total",
                                         "demos_available", "learner_updates", "sft_steps",
                                         "wall_seconds")},
                    **{k: r["curve"][-1].get(k) for k in ("response_length", "truncated",
                                                          "entropy")}}
                   for r in sorted(results, key=lambda r: (cc.methods.index(r["method"]),
                                                           r["seed"]))]
        gain_rows = [{"method": m, **{b: g.get(b) for b in BUCKETS}}
                     for m, g in gains.items() if m != "_counts"]
        gain_rows.append({"method": "questions", **gains["_counts"]})
        curves = [{"method": r["method"], "seed": r["seed"], **p} for r in results
                  for p in r["curve"]]
        files = {"compare_table.csv": rows, "compare_runs.csv": per_run, "claims.csv": claim_rows,
                 "bucket_gains.csv": gain_rows, "curves.csv": curves}
        for name, table in files.items():
            write_csv(table, out_dir / name)
            tracker.mlflow.log_artifact(str(out_dir / name))
        levels = sorted(k for k in base["greedy"] if k.startswith("level_"))
        write_figure(out_dir / "compare.png", base, results, cc.methods, levels[-1])
        tracker.mlflow.log_artifact(str(out_dir / "compare.png"))
        write_diagnostics(out_dir / "diagnostics.png", results, cc.methods)
        save_results(out_dir / "results.json", base, results, cc.methods)
        tracker.mlflow.log_artifact(str(out_dir / "results.json"))
        tracker.mlflow.log_artifact(str(out_dir / "diagnostics.png"))
        (out_dir / "compare_table.txt").write_text(text + "\n")
        tracker.mlflow.log_text(text, "compare_table.txt")
        for row in rows:
            tracker.log_metrics({f"{row['method']}/{k}": v for k, v in row.items()
                                 if isinstance(v, float)})
        wall = time.time() - t_start
        tracker.log_metrics({"wall_seconds": wall})
        status = "FINISHED"
        print("\n" + text, flush=True)
        print(f"\n[compare] {n_runs} runs in {wall:.0f}s; tables and compare.png in {out_dir}; "
              f"MLflow parent run {tracker.run_id} in {cfg.mlflow_uri}", flush=True)
        return {"rows": rows, "gains": gains, "results": results, "base": base, "failed": failed,
                "out_dir": str(out_dir), "run_id": tracker.run_id, "wall_seconds": wall}
    finally:
        tracker.end(status)
        console.stop()


