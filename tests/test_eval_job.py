"""The evaluation job: aggregation against hand-computed values, model resolution, config."""
import json

import pytest
from helpers import ScriptedGenerator

from relift_ray.config import load_config
from relift_ray.data.registry import resolve_model
from relift_ray.errors import ConfigError, DataError
from relift_ray.jobs.evaluate import benchmark_k, benchmark_table, evaluate_benchmarks
from relift_ray.records import Question, Reward


class Rewarder:
    def __init__(self):
        self.calls = 0

    def score(self, pairs):
        self.calls += 1
        return [Reward(1.0) if text == "ok" else Reward(0.0, Reward.NO_ANSWER)
                for text, _ in pairs]


def qs(prefix, n):
    return [Question(id=f"{prefix}{i}", prompt=f"p{i}", answer="1") for i in range(n)]


def test_avg_and_pass_at_k_by_hand():
    # aime: 3 questions x 4 samples: 2/4, 0/4, 4/4 -> avg@4 = 0.5, pass@4 = 2/3
    # gsm: 2 questions x 1 sample: 1, 0 -> avg = pass = 0.5
    script = {"a0": [1, 0, 1, 0], "a1": [0, 0, 0, 0], "a2": [1, 1, 1, 1], "g0": [1], "g1": [0]}
    gens = [ScriptedGenerator(script), ScriptedGenerator(script)]
    rewarders = [Rewarder(), Rewarder()]
    lines = []
    rows, summary = evaluate_benchmarks(gens, rewarders, [("aime", qs("a", 3), 4),
                                                          ("gsm", qs("g", 2), 1)],
                                        chunk=2, seed=5, log=lines.append)
    by = {r["benchmark"]: r for r in summary}
    assert by["aime"]["avg_at_k"] == pytest.approx(0.5)
    assert by["aime"]["pass_at_k"] == pytest.approx(2 / 3)
    assert by["aime"]["no_answer_rate"] == pytest.approx(6 / 12)
    assert (by["gsm"]["avg_at_k"], by["gsm"]["pass_at_k"], by["gsm"]["k"]) == (0.5, 0.5, 1)
    assert by["average"]["avg_at_k"] == pytest.approx(0.5)
    assert by["average"]["pass_at_k"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert [r["correct"] for r in rows] == [2, 0, 4, 1, 0]
    # chunks of 2 questions, spread over both generators; each chunk has its own seed
    calls = gens[0].calls + gens[1].calls
    assert sorted(len(ids) for ids, _ in calls) == [1, 2, 2]
    assert sorted(p.seed for _, p in calls) == [5, 6, 7]
    assert {p.temperature for _, p in calls} == {0.6} and all(r.calls for r in rewarders)
    assert any("aime: 3/3 questions" in line for line in lines)
    table = benchmark_table(summary)
    assert "aime" in table and "50.0%" in table and "66.7%" in table


def test_k_per_benchmark_defaults_to_the_paper_and_can_be_overridden():
    cfg = load_config(None, ["eval.k.aime24=4"])
    assert benchmark_k(cfg, "aime24") == 4 and benchmark_k(cfg, "amc") == 32
    assert benchmark_k(cfg, "math500") == 1
    with pytest.raises(ConfigError, match="eval.benchmarks / eval.k / eval.average / eval.files: "
                                          "unknown benchmark 'aime99'"):
        load_config(None, ["eval.benchmarks=math500,aime99"])
    with pytest.raises(ConfigError, match="eval.k.aime24=0: must be a positive integer"):
        load_config(None, ["eval.k={aime24: 0}"])


def test_model_resolution(tmp_path):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_model(str(model), field="eval.model") == str(model)
    run = tmp_path / "run"
    for step in (10, 20):
        pol = run / f"checkpoint_2026-{step}" / "policy"
        pol.mkdir(parents=True)
        (pol / "config.json").write_text("{}")
        (pol.parent / "meta.json").write_text(json.dumps({"step": step}))
    assert resolve_model(str(run / "checkpoint_2026-10"), field="eval.model") == str(
        run / "checkpoint_2026-10" / "policy")
    assert resolve_model(str(run), field="eval.model") == str(run / "checkpoint_2026-20" / "policy")
    assert resolve_model("Qwen/Qwen2.5-Math-7B", field="eval.model") == "Qwen/Qwen2.5-Math-7B"
    with pytest.raises(DataError, match=r"no such folder \(.*does not exist\), and not a hub id"):
        resolve_model(str(tmp_path / "missing" / "model"), field="eval.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="exists but holds no model: looked for config.json"):
        resolve_model(str(tmp_path / "empty"), field="eval.model")


def test_average_is_the_papers_six_and_gsm8k_stays_outside():
    from relift_ray.jobs.evaluate import benchmark_summary
    six = ["aime24", "aime25", "amc", "math500", "minerva", "olympiadbench"]
    assert load_config(None, []).eval.average == six
    score = {"aime24": 0.1, "aime25": 0.2, "amc": 0.3, "math500": 0.8, "minerva": 0.4,
             "olympiadbench": 0.5, "gsm8k": 0.9, "gpqa_diamond": 0.25}
    rows = [{"benchmark": b, "k": 1, "avg": v, "correct": int(v > 0), "no_answer": 0,
             "mean_tokens": 10.0} for b, v in score.items()]
    by = {r["benchmark"]: r for r in benchmark_summary(rows, list(score), averaged=six)}
    assert by["average"]["avg_at_k"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.8 + 0.4 + 0.5) / 6)
    assert by["gsm8k"]["avg_at_k"] == 0.9 and by["gpqa_diamond"]["avg_at_k"] == 0.25
    # a run of some of the six says so in the row's name
    part = {r["benchmark"]: r for r in benchmark_summary(rows[:3] + rows[6:7], six + ["gsm8k"],
                                                averaged=six)}
    assert part["average (3 of 6)"]["avg_at_k"] == pytest.approx(0.2)
    one = {r["benchmark"]: r for r in benchmark_summary(rows[:1] + rows[6:7], six + ["gsm8k"],
                                               averaged=six)}
    assert one["average (1 of 6)"]["avg_at_k"] == 0.1


def test_evaluation_reads_answers_as_the_released_script():
    from relift_ray.jobs.evaluate import eval_extraction
    released = load_config(None, ["data.answer_extraction=after_think"])
    assert eval_extraction(released) == "think_or_whole"  # no </think>: the whole text
    assert eval_extraction(load_config(None, [])) == "boxed"
    assert eval_extraction(load_config(None, ["data.answer_extraction=after_think",
                                              "eval.answer_extraction=after_think"])) \
        == "after_think"


def test_out_of_distribution_sets_read_from_the_files_given(tmp_path):
    import pandas as pd

    from relift_ray.data.benchmarks import load_benchmark
    rows = [{"data_source": "gpqa", "ability": "science",
             "prompt": [{"role": "user", "content": f"Q{i}? (A) 1 (B) 2 (C) 3 (D) 4"}],
             "reward_model": {"ground_truth": "ABCD"[i], "style": "rule"},
             "extra_info": {"index": i, "split": "test"}} for i in range(4)]
    path = tmp_path / "valid.gpqa.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = load_config(None, [f"eval.files.gpqa_diamond={path}", "eval.benchmarks=[gpqa_diamond]"])
    qs = load_benchmark("gpqa_diamond", limit=0, path=cfg.eval.files["gpqa_diamond"])
    assert [q.answer for q in qs] == ["A", "B", "C", "D"]
    assert qs[2].prompt.startswith("Q2?") and qs[2].source == "gpqa_diamond"
    with pytest.raises(DataError, match="eval.files.mmlu_pro=<file>"):
        load_benchmark("mmlu_pro", data_dir=tmp_path)
