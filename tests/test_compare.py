"""The comparison job: each method's config, the aggregation against hand-computed figures,
and (slow tier) the whole job on a small setting: every method runs, MLflow has one parent
run with a child per (method, seed), the tables and the figure are written."""
import csv

import pytest

from relift_ray.compare import METHODS, bucket_gains, format_table, method_config, method_table
from relift_ray.config import ConfigError, load_config


def test_every_method_is_a_valid_config_with_the_same_budget():
    cfg = load_config("jobs/configs/compare_toy.yaml", ["train.steps=30"])
    made = {m: method_config(cfg, m, 2) for m in METHODS}
    assert {c.train.steps for c in made.values()} == {30}
    assert {c.train.seed for c in made.values()} == {2}
    assert len({c.name for c in made.values()}) == len(METHODS)
    assert made["rl"].algo.mode == "rl" and made["sft"].algo.mode == "sft"
    assert made["sft_then_rl"].algo.sft_first_steps == 10  # 0.33 of 30 steps
    assert made["sft_every_k"].algo.sft_trigger == "every_k"
    assert made["non_hardest_buffer"].algo.buffer_feed == "non_hardest"
    assert made["sft_every_step"].algo.sft_trigger == "every_step"
    assert made["mixed"].algo.mode == "mixed"
    assert made["relift"].algo == cfg.algo  # the released algorithm, unchanged
    with pytest.raises(ConfigError, match="unknown method 'dpo'"):
        method_config(cfg, "dpo", 1)


def _result(method, seed, greedy, sampled_scores, demos=(0, 0)):
    return {"method": method, "seed": seed,
            "greedy": {"overall": greedy, "level_1": greedy, "level_2": greedy},
            "sampled": {"overall": greedy, "level_1": greedy, "level_2": greedy},
            "greedy_scores": sampled_scores, "sampled_scores": sampled_scores,
            "demos_used_unique": demos[0], "demos_used_total": demos[1], "demos_available": 10,
            "learner_updates": 20, "sft_steps": 3, "wall_seconds": 60.0}


BASE = {"greedy": {"overall": 0.5, "level_1": 1.0, "level_2": 0.0},
        "sampled": {"overall": 0.5, "level_1": 1.0, "level_2": 0.0},
        "greedy_scores": {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0},
        "sampled_scores": {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0},
        # pass rates over N samples: a easy, b medium, c and d hardest
        "pass_rates": {"a": 7 / 8, "b": 4 / 8, "c": 0.0, "d": 0.0}}


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


def test_bucket_gains_against_the_base_pass_rates():
    results = [_result("rl", 1, 0, {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}),
               _result("rl", 2, 0, {"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.0}),
               _result("relift", 1, 0, {"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.5})]
    g = bucket_gains(BASE, results)
    assert g["_counts"] == {"easy": 1, "medium": 1, "hard": 0, "hardest": 2}
    assert g["rl"] == pytest.approx({"easy": -0.25, "medium": 0.5, "hardest": 0.0})
    assert g["relift"] == pytest.approx({"easy": 0.0, "medium": 0.0, "hardest": 0.75})
    text = format_table(method_table(BASE, results, ["rl", "relift"]), g, eval_k=4)
    assert "relift" in text and "+0.750" in text and "hardest (2)" in text


@pytest.mark.slow
def test_compare_job_runs_every_method_and_logs_parent_and_children(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from relift_ray.compare import run
    cfg = load_config("jobs/configs/compare_toy.yaml", [
        f"output_dir={tmp_path}", "name=cmp", "train.steps=4", "algo.batch_size=4",
        "algo.n_samples=2", "algo.buffer_size=2", "algo.sft_batch_size=4", "algo.sft_every=2",
        "compare.seeds=1", "compare.eval_every=2", "compare.eval_k=2",
        "compare.bucket_samples=2", "data.max_test_questions=40"])
    out = run(cfg)
    methods = list(cfg.compare.methods)  # the default list: the paper's methods
    assert sorted(r["method"] for r in out["results"]) == sorted(methods)
    for r in out["results"]:
        assert [p["step"] for p in r["curve"]] == [0, 2, 4]
        assert len(r["history"]) == 4
    by = {r["method"]: r for r in out["results"]}
    assert by["rl"]["demos_used_total"] == 0 and by["rl"]["sft_steps"] == 0
    assert by["sft"]["demos_used_total"] == 16 and by["sft"]["learner_updates"] == 4
    assert by["sft_then_rl"]["sft_steps"] == 1  # round(0.33 * 4) offline SFT steps, then RL

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
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["run_id"]]
    assert len(parents) == 1 and parents[0].info.run_id == out["run_id"]
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["method"] for c in children) == sorted(methods)
    child = next(c for c in children if c.data.tags["method"] == "relift")
    assert child.data.params["algo.mode"] == "relift"
    assert len(client.get_metric_history(child.info.run_id, "reward_mean")) == 4
    assert len(client.get_metric_history(child.info.run_id, "test_greedy/overall")) == 3
    arts = {a.path for a in client.list_artifacts(out["run_id"])}
    assert {"compare_table.csv", "bucket_gains.csv", "compare.png"} <= arts


@pytest.mark.slow
def test_a_crashed_run_is_reported_and_the_others_kept(ray_local, tmp_path, monkeypatch):
    import relift_ray.compare as compare

    made = compare.method_config

    def failing_rl(cfg, method, seed):
        out = made(cfg, method, seed)
        if method == "rl":
            out.train.kill = ["learner@1"]
        return out

    monkeypatch.setattr(compare, "method_config", failing_rl)
    cfg = load_config("jobs/configs/compare_toy.yaml", [
        f"output_dir={tmp_path}", "name=crash", "train.steps=2", "algo.batch_size=4",
        "algo.n_samples=2", "algo.buffer_size=2", "compare.methods=rl,relift",
        "compare.seeds=1", "compare.eval_every=0", "compare.eval_k=1",
        "compare.bucket_samples=1", "data.max_test_questions=20"])
    out = compare.run(cfg)
    assert out["failed"] == ["rl seed 1"]
    assert [r["method"] for r in out["results"]] == ["relift"]
    text = (tmp_path / "crash" / "compare_table.txt").read_text()
    assert "FAILED runs (left out of the table): rl seed 1" in text
    from mlflow.tracking import MlflowClient
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(out["run_id"])
    assert run.data.tags["failed_runs"] == "rl seed 1" and run.info.status == "FINISHED"
