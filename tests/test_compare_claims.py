"""The real-model comparisons' pre-registered claims (relift_ray.jobs.compare_claims): the
paired question bootstrap against hand-made results, each rule's three verdicts, and the
comparison config's per-method steps."""
import pytest

from relift_ray.config import load_config
from relift_ray.errors import ConfigError
from relift_ray.jobs.compare import method_config
from relift_ray.jobs.compare_claims import (
    bootstrap,
    greater,
    level,
    paired,
    smollm2_gsm8k_claims,
    smollm2_gsm8k_lora_claims,
    smollm2_toy_claims,
    unmoved,
)
from relift_ray.records import BaseEval, RunResult

QIDS = [f"q{i}" for i in range(40)]


def _run(method, seed, correct=(), answered=(), demos=(0, 0), seen=0):
    return RunResult(name=f"{method}-s{seed}", mode="", method=method, seed=seed, history=[],
                     curve=[], greedy={}, sampled={}, sampled_scores={},
                     greedy_scores={q: float(q in correct) for q in QIDS},
                     answered_ids=sorted(answered), demos_used_unique=demos[0],
                     demos_available=demos[1], questions_seen=seen)


BASE = BaseEval(greedy={"overall": 0.0}, sampled={}, sampled_scores={},
                greedy_scores={q: 0.0 for q in QIDS}, answered_ids=["q0"],
                pass_rates={q: (0.5 if i < 10 else 0.0) for i, q in enumerate(QIDS)})


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_agreement():
    d, lo, hi = bootstrap([1.0] * 20 + [0.0] * 20)
    assert d == 0.5 and lo < 0.5 < hi and hi - lo < 0.4
    assert bootstrap([0.3] * 10) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    assert bootstrap([1.0, -1.0] * 5, seed=3) == bootstrap([1.0, -1.0] * 5, seed=3)


def test_paired_differences_average_over_seeds_and_pair_by_seed():
    a = [_run("x", 1, correct=QIDS[:10]), _run("x", 2, correct=QIDS[:20])]
    b = [_run("y", 2, correct=QIDS[:10]), _run("y", 1, correct=[])]
    row = paired(a, b, "accuracy", QIDS)
    # seed 1: 10/40 - 0, seed 2: 20/40 - 10/40: both +0.25
    assert row["seeds"] == [0.25, 0.25] and row["difference"] == pytest.approx(0.25)
    against_base = paired(a, BASE, "answered", QIDS)  # nobody answered but the base's q0
    assert against_base["seeds"] == [-1 / 40, -1 / 40]


def test_rules_give_each_of_the_three_verdicts():
    assert greater({"low": 0.01, "high": 0.2, "seeds": [0.1, 0.05]}) == "holds"
    assert greater({"low": 0.01, "high": 0.2, "seeds": [0.1, -0.01]}) == "inconclusive"
    assert greater({"low": -0.2, "high": -0.01, "seeds": [-0.1]}) == "does not hold"
    assert greater({"low": -0.01, "high": 0.2, "seeds": [0.1]}) == "inconclusive"
    assert unmoved({"low": -0.01, "high": 0.01}, 0.02) == "holds"
    assert unmoved({"low": 0.03, "high": 0.1}, 0.02) == "does not hold"
    assert unmoved({"low": -0.01, "high": 0.05}, 0.02) == "inconclusive"
    assert level({"low": -0.05, "high": 0.01}) == "holds"
    assert level({"low": -0.05, "high": -0.01}) == "does not hold"
    assert level({"low": 0.01, "high": 0.05}) == "does not hold"
    assert level({"low": float("nan"), "high": float("nan")}) == "inconclusive"


def test_gsm8k_claims_on_scripted_results():
    results = [_run("rl", s, answered=["q0"]) for s in (1, 2)]
    # ReLIFT learned the format on half the questions and solved 8 of them, in both seeds;
    # it used all 12 demonstrations of the 12 questions it sampled (every one was Hardest)
    results += [_run("relift", s, correct=QIDS[:8], answered=QIDS[:20], demos=(12, 7000),
                     seen=12) for s in (1, 2)]
    results += [_run("sft", s, correct=QIDS[:4], answered=QIDS[:30]) for s in (1, 2)]
    rows = smollm2_gsm8k_claims(BASE, results)
    verdict = {r["hypothesis"]: r["verdict"] for r in rows if r["comparison"] == "verdict"}
    assert verdict["a"] == "holds"  # RL: no change at all
    assert verdict["b"] == "holds"
    assert verdict["c"] == "does not hold"  # 12 of 12 sampled questions: not a minority
    assert verdict["c'"] == verdict["d"] == "reported"
    d_rows = {r["comparison"]: r for r in rows if r["hypothesis"] == "d"}
    assert d_rows["relift - sft (accuracy)"]["difference"] == pytest.approx(0.1)
    assert d_rows["relift - sft_then_rl (accuracy)"]["verdict"] == "not run"


def test_lora_claims_on_scripted_results():
    # the full fine-tune solves 8 questions, the adapters 2 of them; both learned the format
    full = [_run("relift", 21, correct=QIDS[:8], answered=QIDS[:30])]
    lora = [_run("relift_lora", 21, correct=QIDS[:2], answered=QIDS[:32])]
    rows = smollm2_gsm8k_lora_claims(BASE, full + lora)
    verdict = {r["hypothesis"]: r["verdict"] for r in rows if r["comparison"] == "verdict"}
    assert verdict == {"L1": "holds", "L2": "does not hold", "R": "reported"}
    l2 = next(r for r in rows if r["hypothesis"] == "L2")
    assert l2["difference"] == pytest.approx(-6 / 40) and l2["high"] < 0
    # one more question each way: level (the interval holds 0)
    even = [_run("relift_lora", 21, correct=QIDS[1:9], answered=QIDS[:32])]
    rows = smollm2_gsm8k_lora_claims(BASE, full + even)
    assert next(r for r in rows if r["hypothesis"] == "L2")["verdict"] == "holds"
    # without the full run, L2 is not run
    rows = smollm2_gsm8k_lora_claims(BASE, lora)
    verdict = {r["hypothesis"]: r["verdict"] for r in rows if r["comparison"] == "verdict"}
    assert verdict["L1"] == "holds" and verdict["L2"] == "not run"


def test_toy_claims_use_the_base_buckets():
    # medium (pass rate 4/8): q0-q9; hardest: q10-q39
    results = [_run("rl", s, correct=QIDS[:6]) for s in (1, 2)]
    results += [_run("relift", s, correct=QIDS[:6] + QIDS[10:20], demos=(30, 1000))
                for s in (1, 2)]
    results += [_run("sft", s, correct=QIDS[:2]) for s in (1, 2)]
    rows = smollm2_toy_claims(BASE, results)
    verdict = {r["hypothesis"]: r["verdict"] for r in rows if r["comparison"] == "verdict"}
    assert verdict == {"T1": "holds", "T2": "holds", "T3": "does not hold", "T4": "holds"}
    t1 = next(r for r in rows if r["hypothesis"] == "T1")
    assert t1["difference"] == pytest.approx(0.6) and "10 questions" in t1["comparison"]


def test_methods_can_run_their_own_number_of_steps():
    cfg = load_config("compare_smollm2_gsm8k")
    steps = {m: method_config(cfg, m, 21).train.steps for m in cfg.compare.methods}
    assert steps == {"rl": 20, "relift": 20, "sft": 40, "sft_then_rl": 40}
    assert method_config(cfg, "sft_then_rl", 21).algo.sft_first_steps == 13  # 33% of 40
    with pytest.raises(ConfigError, match="compare.steps.dpo: unknown method"):
        method_config(load_config("compare_smollm2_gsm8k", ["compare.steps={dpo: 3}"]), "rl", 1)
    with pytest.raises(ConfigError, match="compare.steps.sft=0"):
        load_config("compare_smollm2_gsm8k", ["compare.steps={sft: 0}"])
    with pytest.raises(ConfigError, match="train.autocast"):
        load_config("compare_smollm2_gsm8k", ["model.dtype=bfloat16"])
