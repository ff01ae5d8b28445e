"""The evaluation job: aggregation against hand-computed values, model resolution, config."""
import json

import pytest

from helpers import ScriptedGenerator
from relift_ray.config import ConfigError, load_config
from relift_ray.data import DataError
from relift_ray.eval_job import (benchmark_k, evaluate_benchmarks, format_table,
                                 resolve_model_path)
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
    table = format_table(summary)
    assert "aime" in table and "50.0%" in table and "66.7%" in table


def test_k_per_benchmark_defaults_to_the_paper_and_can_be_overridden():
    cfg = load_config(None, ["eval.k.aime24=4"])
    assert benchmark_k(cfg, "aime24") == 4 and benchmark_k(cfg, "amc") == 32
    assert benchmark_k(cfg, "math500") == 1
    with pytest.raises(ConfigError, match="eval.benchmarks / eval.k: unknown benchmark 'aime99'"):
        load_config(None, ["eval.benchmarks=math500,aime99"])
    with pytest.raises(ConfigError, match="eval.k.aime24=0: must be a positive integer"):
        load_config(None, ["eval.k={aime24: 0}"])


def test_model_resolution(tmp_path):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_model_path(str(model)) == str(model)
    run = tmp_path / "run"
    for step in (10, 20):
        pol = run / f"checkpoint_2026-{step}" / "policy"
        pol.mkdir(parents=True)
        (pol / "config.json").write_text("{}")
        (pol.parent / "meta.json").write_text(json.dumps({"step": step}))
    assert resolve_model_path(str(run / "checkpoint_2026-10")) == str(
        run / "checkpoint_2026-10" / "policy")
    assert resolve_model_path(str(run)) == str(run / "checkpoint_2026-20" / "policy")
    assert resolve_model_path("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    with pytest.raises(DataError, match=r"no such folder \(.*does not exist\), and not a hub id"):
        resolve_model_path(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="exists but holds no model: looked for config.json"):
        resolve_model_path(str(tmp_path / "empty"))
