"""The comparison job: each method's config, the aggregation against hand-computed figures,
and (slow tier) the whole job on a small setting: every method runs, MLflow has one parent
run with a child per (method, seed), the tables and the figure are written."""
import csv

import pytest

from relift_ray.config import load_config
from relift_ray.core.stats import ci95, welch
from relift_ray.errors import ConfigError
from relift_ray.jobs.compare import METHODS, matched_questions, method_config
from relift_ray.jobs.compare_report import (
    bucket_gains,
    claims,
    format_claims,
    method_table,
    method_table_text,
)
from relift_ray.records import BaseEval, RunResult


def test_every_method_is_a_valid_config_with_the_same_budget():
    cfg = load_config("compare_toy", ["train.steps=30"])
    made = {m: method_config(cfg, m, 2) for m in METHODS}
    assert {c.train.steps for c in made.values()} == {30}
    assert {c.train.seed for c in made.values()} == {2}
    assert len({c.name for c in made.values()}) == len(METHODS)
    assert made["rl"].algo.mode == "rl" and made["sft"].algo.mode == "sft"
    assert made["sft_then_rl"].algo.sft_first_steps == 10  # 0.33 of 30 steps
    assert made["sft_every_k"].algo.sft_trigger == "every_k"
    assert made["non_hardest_buffer"].algo.buffer_feed == "non_hardest"
    assert made["sft_every_step"].algo.sft_trigger == "every_step"
    assert (made["mixed"].algo.mode, made["mixed"].algo.mixed_demos) == ("mixed", "all")
    assert made["mixed_hardest"].algo.mixed_demos == "hardest"
    # the released pure-RL baseline (train_rl.sh), and clipped GRPO with std
    rl = made["rl_released"].algo
    assert (rl.mode, rl.rl_loss, rl.clip_eps, rl.grad_clip) == ("rl", "clipped", 0.2, 1.0)
    assert (made["grpo"].algo.mode, made["grpo"].algo.rl_loss) == ("rl", "grpo")
    assert made["relift"].algo == cfg.algo  # the released algorithm, unchanged
    assert not made["relift"].model.lora.rank
    lora = made["relift_lora"]  # ReLIFT on adapters, at ten times the rates
    assert lora.algo.mode == "relift" and lora.model.lora.rank == cfg.compare.lora_rank == 16
    assert (lora.algo.lr, lora.algo.sft_lr) == pytest.approx((10 * cfg.algo.lr,
                                                              10 * cfg.algo.sft_lr))
    with pytest.raises(ConfigError, match="unknown method 'dpo'"):
        method_config(cfg, "dpo", 1)


def _result(method, seed, greedy, sampled_scores, demos=(0, 0)):
    return RunResult(name=f"{method}-s{seed}", mode="", method=method, seed=seed, history=[],
                     greedy={"overall": greedy, "level_1": greedy, "level_2": greedy},
                     sampled={"overall": greedy, "level_1": greedy, "level_2": greedy},
                     greedy_scores=sampled_scores, sampled_scores=sampled_scores,
                     demos_used_unique=demos[0], demos_used_total=demos[1], demos_available=10,
                     learner_updates=20, sft_steps=3, wall_seconds=60.0,
                     curve=[{"step": 0, "response_length": 10.0 + seed}])


BASE = BaseEval(greedy={"overall": 0.5, "level_1": 1.0, "level_2": 0.0},
                sampled={"overall": 0.5, "level_1": 1.0, "level_2": 0.0},
                greedy_scores={"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0},
                sampled_scores={"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0},
                # pass rates over N samples: a easy, b medium, c and d hardest
                pass_rates={"a": 7 / 8, "b": 4 / 8, "c": 0.0, "d": 0.0})


def test_table_means_spreads_and_demonstration_share():
    results = [_result("rl", 1, 0.6, {}), _result("rl", 2, 0.8, {}),
               _result("relift", 1, 0.7, {}, demos=(2, 6)),
               _result("relift", 2, 0.7, {}, demos=(4, 6))]
    rows = {r["method"]: r for r in method_table(BASE, results, ["rl", "relift"])}
    assert rows["rl"]["greedy_overall"] == pytest.approx(0.7)
    assert rows["rl"]["greedy_overall_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std
    assert rows["relift"]["greedy_overall_std"] == 0.0
    assert rows["relift"]["demos_used_unique"] == 3 and rows["relift"]["demos_share"] == 0.3
    assert rows["base"]["greedy_level_1"] == 1.0
    assert rows["rl"]["greedy_overall_ci95"] == pytest.approx(12.7062 * 0.1, abs=1e-4)
    assert rows["rl"]["response_length"] == 11.5  # the final policy's, mean over seeds


def test_results_json_alone_redraws_the_figures(tmp_path):
    """results.json keeps what the figures are made of: redraw() needs nothing else."""
    from relift_ray.jobs.compare_report import redraw, save_results
    results = [_result(m, s, 0.5 + 0.1 * s, {"a": 1.0}) for m in ("rl", "relift") for s in (1, 2)]
    for r in results:
        r.history = [{"step": 1, "reward_mean": 0.5, "buffer_size": 2, "sft_this_step": 1}]
    base = BaseEval(**{**vars(BASE), "profile": {"response_length": 9.0}})
    save_results(tmp_path / "results.json", base, results, ["rl", "relift"])
    redraw(tmp_path)
    for name in ("compare.png", "diagnostics.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_bucket_gains_against_the_base_pass_rates():
    results = [_result("rl", 1, 0, {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}),
               _result("rl", 2, 0, {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.0}),
               _result("relift", 1, 0, {"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.5})]
    g = bucket_gains(BASE, results)
    assert g["_counts"] == {"easy": 1, "medium": 1, "hard": 0, "hardest": 2}
    assert g["rl"] == pytest.approx({"easy": -0.25, "medium": 0.5, "hardest": 0.0})
    assert g["relift"] == pytest.approx({"easy": 0.0, "medium": 0.0, "hardest": 0.75})
    text = method_table_text(method_table(BASE, results, ["rl", "relift"]), g, eval_k=4)
    assert "relift" in text and "+0.750" in text and "hardest (2)" in text


def test_intervals_against_hand_computed_values():
    # [1, 2, 3]: mean 2, sd 1; t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3) = 2.4842
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(2.4842, abs=1e-4)
    assert ci95([0.5]) == 0.0
    # equal variances 1, n 3 each: se = sqrt(2/3) = 0.8165, Welch df = 4, t(0.975, 4) = 2.7764
    d, lo, hi = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert (d, lo, hi) == pytest.approx((-1.0, -1.0 - 2.2669, -1.0 + 2.2669), abs=1e-4)
    # unequal n and variances: va/na = 1/3, vb/nb = 2.5/5 -> se^2 = 5/6,
    # df = (5/6)^2 / ((1/3)^2/2 + (1/2)^2/4) = 5.882, t(0.975, 5.882) = 2.4588
    d, lo, hi = welch([1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 1.0, 3.0])
    assert d == 0.0 and hi == pytest.approx(2.4588 * (5 / 6) ** 0.5, abs=1e-3)
    assert welch([0.2, 0.4], []) == pytest.approx((0.3, 0.3 - 12.7062 * 0.1, 0.3 + 12.7062 * 0.1),
                                                  abs=1e-4)  # one-sample, t(0.975, 1)
    d, lo, hi = welch([0.5], [0.1, 0.2])  # one seed: no spread, no interval
    assert d == pytest.approx(0.35) and lo != lo and hi != hi


def _claim_run(method, seed, overall, scores, length, demos=0):
    r = _result(method, seed, overall, scores, demos=(demos, demos))
    r.curve = [{"step": 0}, {"step": 10, "response_length": length}]
    return r


def test_claims_verdicts_on_scripted_results():
    # base: a easy, b medium, c and d hardest (BASE's pass rates); avg@k per question below
    good = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    rl = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}  # gains on the medium question only
    results = []
    for seed, eps in ((1, 0.0), (2, 0.01), (3, 0.02)):
        results += [_claim_run("relift", seed, 0.90 + eps, good, 20 + seed, demos=1),
                    _claim_run("sft_then_rl", seed, 0.80 + eps, good, 25),
                    _claim_run("sft", seed, 0.85 - eps, good, 30 + seed),  # above sft_then_rl
                    _claim_run("rl", seed, 0.60 + eps, rl, 18)]
    rows = claims(BASE, results)
    verdict = {r["hypothesis"]: r["verdict"] for r in rows if r["comparison"] == "verdict"}
    each = {r["comparison"]: r for r in rows if r["comparison"] != "verdict"}
    assert each["relift > sft_then_rl (overall)"]["verdict"] == "holds"
    assert each["sft_then_rl > sft (overall)"]["verdict"] == "does not hold"
    assert each["sft > rl (overall)"]["verdict"] == "holds"
    assert verdict["H1"] == "does not hold"  # one adjacent pair reversed
    # H2 (a): rl's gain on medium+hard is +0.5 in every seed; (b) sft +1.0 vs rl 0 on hardest
    assert each["rl's gain on medium+hard > 0"]["difference"] == pytest.approx(0.5)
    assert verdict["H2"] == "holds"
    h3 = each["relift's test responses shorter than sft's"]
    assert h3["difference"] == pytest.approx(-10.0) and h3["verdict"] == "holds"
    assert verdict["H4"] == "holds"  # 1 of 10 demonstrations: 10% <= 20%
    assert verdict["H5"] == "not run"  # no matched controls in the results
    text = format_claims(rows)
    assert "H1 verdict: DOES NOT HOLD" in text and "H5 verdict: NOT RUN" in text
    # noisy controls: an interval that straddles 0 is inconclusive; a share over 20% fails H4
    results += [_claim_run("sft_matched_random", s, v, good, 20) for s, v in
                ((1, 0.80), (2, 0.99), (3, 0.93))]
    results += [_claim_run("sft_matched_hardest", s, 0.5, good, 20) for s in (1, 2, 3)]
    results[0].demos_used_unique = 3
    verdict = {r["hypothesis"]: r["verdict"] for r in claims(BASE, results)
               if r["comparison"] == "verdict"}
    assert verdict["H5"] == "inconclusive" and verdict["H4"] == "does not hold"


def test_matched_controls_take_relift_demonstrations():
    from relift_ray.records import Question
    qs = [Question(id=f"q{i}", prompt="p", answer="1", demo="d" if i % 5 else "")
          for i in range(50)]
    used = ["q1", "q7", "q33"]
    assert [q.id for q in matched_questions("sft_matched_hardest", qs, used, 1)] == used
    rand = matched_questions("sft_matched_random", qs, used, 1)
    assert len(rand) == 3 and all(q.demo for q in rand)
    assert rand == matched_questions("sft_matched_random", qs, used, 1)  # by the seed
    assert {q.id for q in rand} != {q.id for q in matched_questions(
        "sft_matched_random", qs, used, 2)}
    cfg = load_config("compare_toy_teacher", [])
    assert method_config(cfg, "sft_matched_hardest", 11).algo.mode == "sft"
    with pytest.raises(ConfigError, match="relift must be in compare.methods"):
        load_config("compare_toy_teacher",
                    ["compare.methods=sft,sft_matched_random"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["teacher", "teacher_budget", "long"])
def test_preregistered_variant_reduced_setting(ray_local, tmp_path, variant):
    """CI's reduced setting of each pre-registered config: every method (the matched controls
    after ReLIFT), the teacher's data, the claims table."""
    from relift_ray.jobs.compare import run
    cfg = load_config(f"compare_toy_{variant}", [
        f"output_dir={tmp_path}", "name=v", "train.steps=10", "compare.seeds=11",
        "compare.eval_every=5", "compare.bucket_samples=4", "data.max_test_questions=100",
        "algo.buffer_size=4"])
    out = run(cfg)
    assert not out.failed
    by = {r.method: r for r in out.results}
    assert sorted(by) == sorted(cfg.compare.methods)
    used = by["relift"].demos_used_unique
    assert used > 0
    for m in ("sft_matched_random", "sft_matched_hardest"):
        assert by[m].demos_used_unique == used and by[m].mode == "sft"
        assert by[m].demos_available == by["sft"].demos_available
    assert set(by["sft_matched_hardest"].demos_used_ids) == set(by["relift"].demos_used_ids)
    assert {"response_length", "truncated", "entropy"} <= set(by["sft"].curve[-1])
    text = (tmp_path / "v" / "compare_table.txt").read_text()
    for h in ("H1", "H2", "H3", "H4", "H5"):
        assert f"{h} verdict:" in text
    with open(tmp_path / "v" / "claims.csv") as f:
        assert len(list(csv.DictReader(f))) == 14  # 9 comparisons + 5 verdicts
    from relift_ray.jobs.compare_report import redraw
    (tmp_path / "v" / "diagnostics.png").unlink()
    redraw(tmp_path / "v")  # the figures again from results.json alone
    assert (tmp_path / "v" / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"
    if variant != "long":  # the teacher's demonstrations: longer than the base model's style
        assert by["sft"].curve[-1]["response_length"] > out.base.profile["response_length"]


@pytest.mark.slow
def test_compare_job_runs_every_method_and_logs_parent_and_children(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from relift_ray.jobs.compare import run
    cfg = load_config("compare_toy", [
        f"output_dir={tmp_path}", "name=cmp", "train.steps=4", "algo.batch_size=4",
        "algo.n_samples=2", "algo.buffer_size=2", "algo.sft_batch_size=4", "algo.sft_every=2",
        "compare.seeds=1", "compare.eval_every=2", "compare.eval_k=2",
        "compare.bucket_samples=2", "data.max_test_questions=40"])
    # the default list (the paper's ablations), and the released baselines beside it
    cfg.compare.methods = [*cfg.compare.methods, "rl_released", "grpo", "mixed"]
    out = run(cfg)
    methods = list(cfg.compare.methods)
    assert sorted(r.method for r in out.results) == sorted(methods)
    for r in out.results:
        assert [p["step"] for p in r.curve] == [0, 2, 4]
        assert len(r.history) == 4
    by = {r.method: r for r in out.results}
    assert by["rl"].demos_used_total == 0 and by["rl"].sft_steps == 0
    assert by["sft"].demos_used_total == 16 and by["sft"].learner_updates == 4
    assert by["sft_then_rl"].sft_steps == 1  # round(0.33 * 4) offline SFT steps, then RL
    assert by["rl_released"].demos_used_total == 0 and by["grpo"].demos_used_total == 0
    assert by["mixed"].demos_used_total >= by["mixed_hardest"].demos_used_total

    d = tmp_path / "cmp"
    for name in ("compare_table.csv", "compare_runs.csv", "bucket_gains.csv", "curves.csv",
                 "compare.png", "diagnostics.png", "compare_table.txt"):
        assert (d / name).stat().st_size > 0, name
    assert (d / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with open(d / "compare_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["base", *methods]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "relift_ray"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out.run_id]
    assert len(parents) == 1 and parents[0].info.run_id == out.run_id
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["method"] for c in children) == sorted(methods)
    child = next(c for c in children if c.data.tags["method"] == "relift")
    assert child.data.params["algo.mode"] == "relift"
    assert len(client.get_metric_history(child.info.run_id, "reward_mean")) == 4
    assert len(client.get_metric_history(child.info.run_id, "test_greedy/overall")) == 3
    arts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"compare_table.csv", "bucket_gains.csv", "compare.png"} <= arts


@pytest.mark.slow
def test_a_crashed_run_is_reported_and_the_others_kept(ray_local, tmp_path, monkeypatch):
    import relift_ray.jobs.compare as compare

    made = compare.method_config

    def failing_rl(cfg, method, seed):
        out = made(cfg, method, seed)
        if method == "rl":
            out.train.kill = ["learner@1"]
        return out

    monkeypatch.setattr(compare, "method_config", failing_rl)
    cfg = load_config("compare_toy", [
        f"output_dir={tmp_path}", "name=crash", "train.steps=2", "algo.batch_size=4",
        "algo.n_samples=2", "algo.buffer_size=2", "compare.methods=rl,relift",
        "compare.seeds=1", "compare.eval_every=0", "compare.eval_k=1",
        "compare.bucket_samples=1", "data.max_test_questions=20"])
    out = compare.run(cfg)
    assert out.failed == ["rl seed 1"]
    assert [r.method for r in out.results] == ["relift"]
    text = (tmp_path / "crash" / "compare_table.txt").read_text()
    assert "FAILED runs (left out of the table): rl seed 1" in text
    from mlflow.tracking import MlflowClient
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(out.run_id)
    assert run.data.tags["failed_runs"] == "rl seed 1" and run.info.status == "FINISHED"


def test_a_finished_run_is_saved_and_reused_only_for_the_same_settings(tmp_path):
    from relift_ray.jobs.compare import (
        Comparison,
        _base_material,
        _run_material,
        load_finished,
        save_finished,
    )
    from relift_ray.records import Question

    def job(*over):
        cfg = load_config("compare_toy", [f"output_dir={tmp_path}", *over])
        j = Comparison(cfg, {(m, s): method_config(cfg, m, s) for m in cfg.compare.methods
                             for s in cfg.compare.seeds}, model_path="/m",
                       train_qs=[Question("a", "p", "1")], test_qs=[Question("t", "p", "2")])
        j.out_dir = str(tmp_path / "out")
        return j
    j = job()
    r = _result("relift", 1, 0.5, {"t": 1.0})
    assert load_finished(j, "relift-s1", _run_material(j, "relift", 1)) is None
    save_finished(j, "relift-s1", _run_material(j, "relift", 1), r)
    save_finished(j, "base", _base_material(j), BASE)
    assert load_finished(j, "relift-s1", _run_material(j, "relift", 1)) == r
    assert load_finished(job(), "base", _base_material(job())) == BASE
    # another list of methods or seeds keeps both; another setting of the run does not
    more = job("compare.methods=[relift,rl]", "compare.seeds=[1,5]")
    assert load_finished(more, "relift-s1", _run_material(more, "relift", 1)) == r
    assert load_finished(more, "base", _base_material(more)) == BASE
    other = job("algo.sft_lr=0.1")
    assert load_finished(other, "relift-s1", _run_material(other, "relift", 1)) is None
    assert load_finished(other, "base", _base_material(other)) is None
    j.test_qs = [Question("u", "p", "2")]  # other test questions
    assert load_finished(j, "relift-s1", _run_material(j, "relift", 1)) is None
    j.test_qs = [Question("t", "p", "2")]
    # saved by a version without a field: reused while the field holds its default, not
    # once it is set; a default that changed since voids it
    import pickle
    f = tmp_path / "out" / "finished" / "relift-s1.pkl"

    def saved_without(key, value=None):
        saved = pickle.loads(f.read_bytes())
        if value is None:
            saved["material"]["settings"].pop(key)
        else:
            saved["material"]["settings"][key] = value
        f.write_bytes(pickle.dumps(saved))
    saved_without("data.max_demo_tokens")
    assert load_finished(j, "relift-s1", _run_material(j, "relift", 1)) == r
    cut = job("data.max_demo_tokens=100")
    assert load_finished(cut, "relift-s1", _run_material(cut, "relift", 1)) is None
    saved_without("algo.mixed_demos", "hardest")  # made when the default was another
    assert load_finished(j, "relift-s1", _run_material(j, "relift", 1)) is None
