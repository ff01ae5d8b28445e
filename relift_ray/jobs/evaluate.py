"""The evaluation job: a model or checkpoint on the paper's math benchmarks.

    relift evaluate eval.model=runs/ray_train/toy-relift eval.benchmarks=gsm8k eval.max_questions=50

The paper's protocol: ``k`` samples per question at temperature 0.6, top_p 1 (avg@32 for AIME
and AMC, one sample for MATH-500, OlympiadBench, Minerva and GSM8K; ``eval.k`` overrides),
scored by the reward pool (math-verify in worker processes with a hard time limit). Generator
and reward actors are the training job's own. Prompts follow the run's ``data`` settings
(chat template, system prompt, answer extraction), so a model is evaluated the way it trains.

Writes ``<output_dir>/<name>/eval_results.csv`` (avg@k, pass@k per benchmark and the average),
``eval_questions.csv`` (per question: correct samples, a sample response) and
``eval_table.txt``; logs the same to an MLflow run; prints progress and the table. The sampling
phase's generation throughput (generated tokens and completions per second, once the workers
have started) is printed, logged as ``eval/gen_tokens_per_s`` and ``eval/completions_per_s``,
and kept in ``EvalResult.throughput``.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import ray
from transformers import AutoTokenizer

from relift_ray.catalog import BENCHMARKS, NOT_FETCHED
from relift_ray.config import RunConfig
from relift_ray.data.benchmarks import benchmark_path, default_fetch_dir, how_to_get, load_benchmark
from relift_ray.data.prompts import prepare_tokenizer, render_prompts
from relift_ray.data.registry import resolve_model
from relift_ray.errors import DataError
from relift_ray.jobs.data_fetch import fetch_checked
from relift_ray.records import Question, SamplingParams
from relift_ray.rollout.calls import call_all, is_actor, score_all
from relift_ray.runtime.cluster import init_ray
from relift_ray.runtime.topology import check_model_len, start_workers
from relift_ray.tracking.tracker import Tracker, write_csv


def benchmark_k(cfg: RunConfig, name: str) -> int:
    return int(cfg.eval.k.get(name, BENCHMARKS[name].k))


def _stream(generators: list, jobs: list[tuple]):
    """Run generate(*job) over the generators; yield (job index, result) as each finishes."""
    if not is_actor(generators[0]):
        for i, job in enumerate(jobs):
            yield i, generators[i % len(generators)].generate(*job)
        return
    queue = list(range(len(jobs)))[::-1]
    running = {}
    for g in generators:
        if queue:
            i = queue.pop()
            running[g.generate.remote(*jobs[i])] = (i, g)
    while running:
        (done,), _ = ray.wait(list(running), num_returns=1)
        i, g = running.pop(done)
        if queue:
            j = queue.pop()
            running[g.generate.remote(*jobs[j])] = (j, g)
        yield i, ray.get(done)


def evaluate_benchmarks(generators: list, rewarders: list, suites: list[tuple[str, list, int]],
                        *, temperature: float = 0.6, top_p: float = 1.0,
                        max_new_tokens: int = 1024, chunk: int = 8, seed: int = 0,
                        log=print, averaged: list[str] | None = None
                        ) -> tuple[list[dict], list[dict], dict]:
    """suites: [(benchmark, questions, k)] -> (per-question rows, per-benchmark summary rows,
    the generation throughput: ``throughput``'s dict)."""
    jobs, owners = [], []
    for name, qs, k in suites:
        for start in range(0, len(qs), chunk):
            params = SamplingParams(n=k, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, seed=seed + len(jobs))
            jobs.append((qs[start:start + chunk], params))
            owners.append(name)
    total = {name: len(qs) for name, qs, _ in suites}
    done_q: dict[str, int] = defaultdict(int)
    tokens = completions = 0
    seconds: dict[str, float] = defaultdict(float)
    rows: list[dict] = []
    # the clock starts once every generator is up: an engine's start-up (a vLLM engine's is
    # most of a short run) is no part of the sampling throughput. Reward workers start beside
    # them and sooner.
    call_all(generators, "get_version", [()] * len(generators))
    t0 = last_log = time.perf_counter()
    t_prev = t0
    for i, groups in _stream(generators, jobs):
        name, (qs, params) = owners[i], jobs[i]
        pairs = [(c.text, q.answer) for q, group in zip(qs, groups) for c in group]
        scored = score_all(rewarders, pairs)
        at = 0
        for q, group in zip(qs, groups):
            res = scored[at:at + len(group)]
            at += len(group)
            correct = sum(r.value > 0 for r in res)
            tokens += sum(len(c.response_ids) for c in group)
            completions += len(group)
            rows.append({"benchmark": name, "id": q.id, "answer": q.answer, "k": len(group),
                         "correct": correct, "avg": correct / len(group),
                         "no_answer": sum(r.no_answer for r in res),
                         "mean_tokens": sum(len(c.response_ids) for c in group) / len(group),
                         "response_0": group[0].text[:500]})
        now = time.perf_counter()
        seconds[name] += now - t_prev
        t_prev = now
        done_q[name] += len(qs)
        finished = done_q[name] == total[name]
        if finished or now - last_log > 10:
            last_log = now
            acc = [x["avg"] for x in rows if x["benchmark"] == name]
            left = sum(total.values()) - sum(done_q.values())
            rate = sum(done_q.values()) / (now - t0)
            log(f"[eval] {name}: {done_q[name]}/{total[name]} questions, avg so far "
                f"{sum(acc) / len(acc):.3f} | all: {left} questions left, "
                f"eta {left / max(rate, 1e-9):.0f} s")
    speed = throughput(tokens, completions, time.perf_counter() - t0)
    log(f"[eval] sampling: {completions} completions, {tokens} tokens in "
        f"{speed['gen_seconds']:.1f} s: {speed['gen_tokens_per_s']:.1f} tokens/s, "
        f"{speed['completions_per_s']:.2f} completions/s")
    return rows, benchmark_summary(rows, [s[0] for s in suites], seconds, averaged), speed


def throughput(tokens: int, completions: int, seconds: float) -> dict:
    """Generated tokens (the completions' response_ids) and completions per second of the
    sampling phase's wall time; scoring overlaps it but for the last chunk's."""
    per_s = 1 / max(seconds, 1e-9)
    return {"gen_tokens": tokens, "completions": completions, "gen_seconds": seconds,
            "gen_tokens_per_s": tokens * per_s, "completions_per_s": completions * per_s}


def eval_extraction(cfg: RunConfig) -> str:
    """eval.answer_extraction, with auto resolved: a run trained on the released reward
    (after_think) is evaluated as the released script does (think_or_whole)."""
    e = cfg.eval.answer_extraction
    if e != "auto":
        return e
    d = cfg.data.answer_extraction
    return "think_or_whole" if d == "after_think" else d


def benchmark_summary(rows: list[dict], names: list[str], seconds: dict | None = None,
              averaged: list[str] | None = None) -> list[dict]:
    """One row per benchmark (avg@k, pass@k, no-answer rate, mean response tokens) and an
    'average' row: the mean of the avg@k (and pass@k) of the benchmarks in ``averaged``
    (eval.average: the paper's six) that ran, named 'average (k of n)' when some did not;
    every benchmark when ``averaged`` is None."""
    out = []
    for name in names:
        rs = [r for r in rows if r["benchmark"] == name]
        if not rs:
            continue
        samples = sum(r["k"] for r in rs)
        out.append({"benchmark": name, "questions": len(rs), "k": rs[0]["k"],
                    "avg_at_k": sum(r["avg"] for r in rs) / len(rs),
                    "pass_at_k": sum(r["correct"] > 0 for r in rs) / len(rs),
                    "no_answer_rate": sum(r["no_answer"] for r in rs) / samples,
                    "mean_tokens": sum(r["mean_tokens"] * r["k"] for r in rs) / samples,
                    "seconds": round((seconds or {}).get(name, 0.0), 1)})
    inside = [r for r in out if averaged is None or r["benchmark"] in averaged]
    if len(inside) > 1 or (inside and averaged is not None and len(averaged) > 1):
        want = len(averaged) if averaged is not None else len(inside)
        label = "average" if len(inside) == want else f"average ({len(inside)} of {want})"
        out.append({"benchmark": label, "questions": sum(r["questions"] for r in inside),
                    "k": "", "avg_at_k": sum(r["avg_at_k"] for r in inside) / len(inside),
                    "pass_at_k": sum(r["pass_at_k"] for r in inside) / len(inside),
                    "no_answer_rate": "", "mean_tokens": "", "seconds": ""})
    return out


def benchmark_table(summary: list[dict]) -> str:
    lines = [f"{'benchmark':<15}{'questions':>10}{'k':>4}{'avg@k':>9}{'pass@k':>9}"
             f"{'no answer':>11}{'tokens':>9}"]
    for r in summary:
        extra = (f"{r['no_answer_rate']:>11.3f}{r['mean_tokens']:>9.1f}"
                 if r["no_answer_rate"] != "" else "")
        lines.append(f"{r['benchmark']:<15}{r['questions']:>10}{str(r['k']):>4}"
                     f"{100 * r['avg_at_k']:>8.1f}%{100 * r['pass_at_k']:>8.1f}%{extra}")
    return "\n".join(lines)


def ensure_benchmarks(cfg: RunConfig, log=print) -> None:
    """Before any model loads: every configured benchmark is on disk (in the data folder or
    the fetch folder), or fetched from its source into the fetch folder; else a DataError
    saying in one line how to get it."""
    e = cfg.eval
    missing = [n for n in e.benchmarks
               if not benchmark_path(n, e.data_dir, e.files.get(n, "")).exists()]
    fetchable = [n for n in missing if n not in NOT_FETCHED and n not in e.files]
    if fetchable:
        log(f"[eval] {', '.join(fetchable)}: not on this machine; fetching them once into "
            f"{default_fetch_dir()} (relift data fetch)")
        try:
            fetch_checked(fetchable, log=log)
        except DataError as err:
            path = benchmark_path(fetchable[0], e.data_dir)
            raise DataError(f"{how_to_get(fetchable[0], path)}, or leave it out of "
                            f"eval.benchmarks; fetching failed: {err}") from None
        missing = [n for n in missing if n not in fetchable]
    if missing:
        load_benchmark(missing[0], e.data_dir, path=e.files.get(missing[0], ""))  # raises


def load_suites(cfg: RunConfig, tokenizer, log=print) -> list[tuple[str, list[Question], int]]:
    """The configured benchmarks with prompts rendered for the model."""
    suites = []
    for name in cfg.eval.benchmarks:
        qs = load_benchmark(name, cfg.eval.data_dir, cfg.eval.max_questions,
                            path=cfg.eval.files.get(name, ""))
        kept, dropped = render_prompts(qs, tokenizer, cfg.data)
        if dropped:
            log(f"[eval] {name}: dropped {dropped} questions whose prompt exceeds "
                f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}")
        suites.append((name, kept, benchmark_k(cfg, name)))
    return suites


@dataclass
class EvalResult:
    """What the evaluation job returns: the model, the per-benchmark summary rows (and the
    average row), the per-question rows, where they were written, the MLflow run, the
    sampling phase's generation throughput (``throughput``'s dict)."""
    model: str
    summary: list[dict]
    rows: list[dict]
    output: str
    run_id: str
    seconds: float
    throughput: dict = field(default_factory=dict)


def run(cfg: RunConfig) -> EvalResult:
    """Prepare (benchmarks on disk, the model, the prompts), sample and score on the actors,
    write and log the results."""
    t_start = time.time()
    model, suites = prepare(cfg)

    init_ray(cfg)
    tracker = Tracker(cfg.mlflow_uri, cfg.tracking.experiment, f"eval-{cfg.name}",
                      tags={"job": "evaluate", "model": model}, artifact_root=cfg.artifact_root)
    tracker.log_config(cfg)
    status = "FAILED"
    try:
        rows, summary, reward_stats, speed = sample_and_score(cfg, model, suites)
        out = report(cfg, model, tracker, rows, summary, reward_stats, t_start, speed)
        status = "FINISHED"
        return EvalResult(model, summary, rows, str(out), tracker.run_id, time.time() - t_start,
                          speed)
    finally:
        tracker.end(status)


def prepare(cfg: RunConfig) -> tuple[str, list]:
    """The model (resolved) and the benchmarks' questions with prompts for it; missing
    benchmarks are fetched before any model is converted or loaded."""
    ensure_benchmarks(cfg)
    model = (resolve_model(cfg.eval.model, field="eval.model") if cfg.eval.model
             else resolve_model(cfg.model.path))
    if cfg.generator.backend == "vllm":
        check_model_len(cfg.generator.max_model_len, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    prepare_tokenizer(tokenizer, cfg)
    suites = load_suites(cfg, tokenizer)
    plan = ", ".join(f"{n} {len(q)}x{k}" for n, q, k in suites)
    print(f"[eval] model {model}: {plan} (questions x samples), temperature "
          f"{cfg.eval.temperature}, top_p {cfg.eval.top_p}, up to {max_tokens(cfg)} new "
          f"tokens, answers read as {eval_extraction(cfg)}", flush=True)
    return model, suites


def max_tokens(cfg: RunConfig) -> int:
    return cfg.eval.max_new_tokens or cfg.algo.max_new_tokens


def sample_and_score(cfg: RunConfig, model: str, suites: list
                     ) -> tuple[list, list, list, dict]:
    """The suites on the job's own generator and reward actors (named eval-*): per-question
    rows, per-benchmark summary, the reward workers' statistics, the generation throughput."""

    rewarders, generators = start_workers(cfg, model, prefix="eval-",
                                          extraction=eval_extraction(cfg))
    try:
        rows, summary, speed = evaluate_benchmarks(
            generators, rewarders, suites, temperature=cfg.eval.temperature,
            top_p=cfg.eval.top_p, max_new_tokens=max_tokens(cfg),
            chunk=cfg.eval.chunk_questions, seed=cfg.eval.seed,
            log=lambda line: print(line, flush=True), averaged=list(cfg.eval.average))
        return rows, summary, ray.get([r.get_stats.remote() for r in rewarders]), speed
    finally:
        for a in [*rewarders, *generators]:
            ray.kill(a)


def report(cfg: RunConfig, model: str, tracker, rows: list, summary: list, reward_stats: list,
           t_start: float, speed: dict | None = None) -> Path:
    """eval_results.csv, eval_questions.csv and eval_table.txt in <output_dir>/<name> and in
    MLflow with the metrics (the generation throughput ``speed`` among them); the table
    printed. Returns the folder."""

    table = benchmark_table(summary)
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_csv(summary, out / "eval_results.csv")
    write_csv(rows, out / "eval_questions.csv")
    (out / "eval_table.txt").write_text(table + "\n")
    for r in summary:  # "average (3 of 6)" is logged as eval/average/...
        key = r["benchmark"].split(" ")[0]
        tracker.log_metrics({f"eval/{key}/avg_at_k": r["avg_at_k"],
                             f"eval/{key}/pass_at_k": r["pass_at_k"]})
        if key != r["benchmark"]:
            tracker.set_tags({"eval_average": r["benchmark"]})
    for f in ("eval_results.csv", "eval_questions.csv", "eval_table.txt"):
        tracker.mlflow.log_artifact(str(out / f))
    tracker.log_metrics({"reward_timeouts": sum(s["timeouts"] for s in reward_stats),
                         **{f"reward_{k}": sum(s.get(k, 0) for s in reward_stats)
                            for k in ("deaths", "memory", "killed")},
                         "eval_seconds": time.time() - t_start,
                         **{f"eval/{k}": v for k, v in (speed or {}).items()}})
    gen = (f"; generation ({cfg.generator.backend}) {speed['gen_tokens_per_s']:.1f} tokens/s, "
           f"{speed['completions_per_s']:.2f} completions/s" if speed else "")
    print(f"[eval] {model}\n{table}\n[eval] results in {out} (MLflow run "
          f"{tracker.run_id}, {time.time() - t_start:.0f} s){gen}", flush=True)
    return out
