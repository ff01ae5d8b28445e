"""Answer extraction, math-verify scoring, and the reward worker's hard time limit."""
import pytest
from helpers import SHARED, needs_shared

from relift_ray.core.scoring import extract_answer, last_boxed, math_reward
from relift_ray.records import Reward
from relift_ray.rollout.rewards import RewardWorker


def test_extraction_modes():
    r = "<think>maybe \\boxed{3}</think> so \\boxed{\\frac{1}{2}} done"
    assert extract_answer(r, "whole") == r
    assert extract_answer(r, "after_think") == " so \\boxed{\\frac{1}{2}} done"
    assert extract_answer(r, "boxed") == "\\boxed{\\frac{1}{2}}"
    assert extract_answer("no think tag", "after_think") is None
    assert extract_answer("no box", "boxed") is None
    assert last_boxed("\\boxed{a{b}c} \\boxed{x") is None  # unbalanced last box
    with pytest.raises(ValueError, match="answer extraction 'last'"):
        extract_answer(r, "last")


@pytest.mark.parametrize("response, truth, reward", [
    ("so \\boxed{12}", "12", 1.0),
    ("so \\boxed{12.0}", "12", 1.0),
    ("so \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("so \\boxed{13}", "12", 0.0),
    ("the answer is 12", "12", 0.0),  # boxed extraction: no box, no answer
])
def test_math_reward_is_binary(response, truth, reward):
    assert math_reward(response, truth, "boxed")[0] == reward


def test_no_answer_is_reported():
    assert math_reward("nothing here", "1", "boxed") == (0.0, "no_answer")
    assert math_reward("</think> \\boxed{1}", "1", "after_think") == (1.0, "ok")


@pytest.mark.parametrize("response, truth, extraction", [
    ("\\boxed{42}", "42", "boxed"), ("\\boxed{41}", "42", "boxed"),
    ("\\boxed{007}", "7", "boxed"), ("\\boxed{-0}", "0", "boxed"),
    ("\\boxed{-5}", "5", "boxed"), ("\\boxed{ 42 }", "42", "boxed"),
    ("\\boxed{10}", "010", "boxed"), ("\\boxed{12345678901234567890}", "12345678901234567890",
                                     "boxed"),
    ("\\boxed{4.0}", "4", "boxed"), ("\\boxed{2/4}", "1/2", "boxed"),
    (" 7 ", "7", "whole"), ("-3", "3", "whole"), ("08", "8", "think_or_whole"),
    # math-verify reads no full-width or Arabic-Indic digit, and no "-07" outside \boxed{}
    ("\\boxed{\uff17}", "7", "boxed"), ("\u0663", "3", "whole"),
    ("x</think>-07", "-7", "after_think"), ("-001", "10", "whole"), ("-0", "0", "whole")])
def test_the_shortcuts_agree_with_math_verify(response, truth, extraction):
    """The exact-match and integer shortcuts give math-verify's own verdict (exact_match=False
    parses every answer)."""
    assert math_reward(response, truth, extraction) == \
        math_reward(response, truth, extraction, exact_match=False)


def test_worker_scores_in_a_child_process():
    w = RewardWorker("boxed", timeout_s=10)
    try:
        out = w.score([("\\boxed{4}", "4"), ("\\boxed{5}", "4"), ("none", "4")])
        assert [r.value for r in out] == [1.0, 0.0, 0.0]
        assert [r.status for r in out] == ["ok", "ok", "no_answer"]
        assert w.get_stats()["no_answer"] == 1 and w.get_stats()["scored"] == 3
        assert w._proc.pid != __import__("os").getpid()
    finally:
        w.close()


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_hard_time_limit_costs_one_timeout_and_scoring_goes_on():
    w = RewardWorker("whole", timeout_s=1.0, fn="helpers:slow_reward")
    try:
        out = w.score([("7", "7"), ("HANG", "7"), ("7", "7"), ("8", "7")])
        assert out == [Reward(1.0), Reward(0.0, Reward.TIMEOUT), Reward(1.0), Reward(0.0)]
        assert [r.timed_out for r in out] == [False, True, False, False]
        s = w.get_stats()
        assert s["timeouts"] == 1 and s["restarts"] == 1 and s["seconds"] < 30
    finally:
        w.close()


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_the_limit_is_per_answer_not_per_batch():
    """Answers go to the child together; each has the limit from when the one before it came
    back, so five answers of 0.4 s under a 1 s limit all score."""
    w = RewardWorker("whole", timeout_s=1.0, fn="helpers:slow_reward")
    try:
        out = w.score([("SLOW7", "7")] * 5 + [("HANG", "7"), ("SLOW7", "7"), ("8", "7")])
        assert [r.value for r in out] == [1.0] * 5 + [0.0, 1.0, 0.0]
        assert [r.timed_out for r in out] == [False] * 5 + [True, False, False]
        assert w.get_stats()["restarts"] == 1
    finally:
        w.close()


@pytest.mark.parametrize("response, training, evaluation", [
    # one </think>: the answer after it, for both
    ("reasoning</think>\nThe answer is \\boxed{7}.", "\nThe answer is \\boxed{7}.",
     "\nThe answer is \\boxed{7}."),
    # a second </think>: the released code keeps split("</think>")[1], the piece between the
    # first and the second tag; what follows the second is never read
    ("a</think> \\boxed{7} </think> \\boxed{8}", " \\boxed{7} ", " \\boxed{7} "),
    # no </think>: the training reward gives 0, the released evaluation reads the whole text
    ("no tag, \\boxed{7}", None, "no tag, \\boxed{7}"),
    # a tag with nothing after it
    ("thinking</think>", "", ""),
])
def test_think_handling_follows_the_released_reward_and_evaluation(response, training,
                                                                    evaluation):
    assert extract_answer(response, "after_think") == training
    assert extract_answer(response, "think_or_whole") == evaluation


def test_released_reward_scores_the_piece_after_the_first_think_end():
    two = "a</think> \\boxed{7} </think> \\boxed{8}"
    assert math_reward(two, "7", "after_think").value == 1.0
    assert math_reward(two, "8", "after_think").value == 0.0  # after the 2nd tag: never read
    assert math_reward("\\boxed{7}", "7", "after_think") == (0.0, "no_answer")
    assert math_reward("\\boxed{7}", "7", "think_or_whole") == (1.0, "ok")
    # out-of-distribution multiple choice: the letter goes through math-verify, as released
    assert math_reward("x</think> The answer is \\boxed{C}.", "C", "think_or_whole").value == 1.0
    assert math_reward("x</think> \\boxed{B}", "C", "think_or_whole").value == 0.0


# ---------------------------------------------------------------- the released reward's verdicts

@pytest.mark.parametrize("segment, truth, released, current", [
    # a response that corrects itself: math-verify 0.6.0 reads the last box; newer versions
    # merge nearby boxes into a set {3, 5}
    ("First \\boxed{3}, but wait, actually the answer is \\boxed{5}.", "5", 1.0, 0.0),
    ("\\boxed{3}\\boxed{5}", "5", 1.0, 0.0),
    ("\\boxed{3}, \\boxed{5}", "5", 0.0, 0.0),  # a bare separator: one answer, {3, 5}
    ("The answer is \\boxed{3} and \\boxed{5}.", "5", 0.0, 0.0),
    # a percentage is its value
    ("\\boxed{42\\%}", "42", 0.0, 1.0),
    ("\\boxed{42\\%}", "0.42", 1.0, 1.0),
    ("\\boxed{8}", "8 \\%", 0.0, 1.0),
    # no exact-match shortcut where math-verify finds no answer
    (" p - q", "p - q", 0.0, 1.0),
    ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}", 1.0, 1.0),
    ("\\boxed{007}", "7", 1.0, 1.0),
])
def test_the_released_verifier_on_the_cases_where_versions_differ(segment, truth, released,
                                                                   current):
    from relift_ray.core.scoring import released_reward
    response = "<think>work</think>" + segment
    assert released_reward(response, truth, "after_think").value == released
    assert math_reward(response, truth, "after_think").value == current
    assert released_reward("no closing tag \\boxed{5}", "5", "after_think").status == \
        Reward.NO_ANSWER


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
@needs_shared
def test_the_released_verifier_gives_the_released_verdicts_on_the_corpus():
    """9,552 answer variants of 500 MATH-500 and GSM8K golds, against the verdicts of the
    released scorer on math-verify 0.6.0 (scripts/released_verdicts.py): all agree; the
    installed library without the released rules disagrees on about a fifth."""
    import json
    import logging
    from pathlib import Path

    from released_corpus import corpus

    from relift_ray.core.scoring import released_reward
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    lines = (Path(__file__).parent / "data/released_verdicts.jsonl").read_text().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert head == {"math_verify": "0.6.0", "items": len(rows)}
    want = {r["id"]: r["verdict"] for r in rows}
    items = corpus(SHARED)
    assert [i for i, _, _ in items] == list(want)  # the same corpus as the verdicts'
    wrong = [(i, g, want[i]) for i, response, g in items
             if released_reward(response, g, "after_think").value != want[i]]
    assert not wrong, f"{len(wrong)} of {len(items)} disagree, e.g. {wrong[:5]}"
    current = sum(math_reward(r, g, "after_think").value != want[i] for i, r, g in items[::7])
    assert current > 0.1 * len(items[::7])  # the corpus does hold the cases that differ


def test_the_paper_preset_scores_with_the_released_verifier():
    from relift_ray.config import load_config
    from relift_ray.core.scoring import VERIFIERS
    cfg = load_config("relift_ray/configs/paper.yaml", [])
    assert cfg.data.verifier == "released" and load_config(None, []).data.verifier == "current"
    w = RewardWorker("after_think", 5.0, VERIFIERS[cfg.data.verifier])
    try:
        got = w.score([("<think>a</think>\\boxed{3}, wait, \\boxed{5}", "5"),
                       ("<think>a</think>\\boxed{42\\%}", "42")])
    finally:
        w.close()
    assert [r.value for r in got] == [1.0, 0.0]


# ---------------------------------------------------------------- the scoring process's faults

@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_a_dead_scoring_process_is_restarted_and_its_answers_scored_again(tmp_path):
    marker = str(tmp_path / "died")
    w = RewardWorker("whole", timeout_s=5.0, fn="helpers:dying_reward")
    try:
        # the child dies on the second answer once: it is restarted, that answer and the ones
        # after it scored again
        got = w.score([("ok", marker), ("ok DIE_ONCE", marker), ("no", marker), ("ok", marker)])
        assert [r.value for r in got] == [1.0, 1.0, 0.0, 1.0]
        assert w.stats.deaths == 1 and w.stats.killed == 0
        # an answer that kills every child scores 0, KILLED, and the others go on
        got = w.score([("ok", marker), ("DIE_ALWAYS ok", marker), ("ok", marker)])
        assert [(r.value, r.status) for r in got] == [(1.0, "ok"), (0.0, Reward.KILLED),
                                                       (1.0, "ok")]
        assert w.stats.deaths == 3 and w.stats.killed == 1
        # killed between two calls (the kernel's OOM killer): the next call restarts it
        import os
        import signal
        os.kill(w._proc.pid, signal.SIGKILL)
        w._proc.join(5)
        assert [r.value for r in w.score([("ok", marker)])] == [1.0]
        assert w.stats.deaths == 4
    finally:
        w.close()


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_pathological_answers_cost_a_bounded_time_and_memory():
    import time
    # \boxed{2^{2^{32}}} grows to gigabytes without a limit; the others run for seconds
    bad = ["\\boxed{2^{2^{32}}}", "\\boxed{9^{9^{9}}}",
           "\\boxed{" + "{" * 40 + "1" + "}" * 40 + "}"]
    w = RewardWorker("boxed", timeout_s=3.0, memory_mb=1024)
    try:
        t0 = time.perf_counter()
        got = w.score([(b, "1") for b in bad] + [("\\boxed{7}", "7")])
        assert time.perf_counter() - t0 < 3.0 * len(bad) + 10
        assert [r.value for r in got] == [0.0, 0.0, 0.0, 1.0]
        assert all(r.status in (Reward.MEMORY, Reward.TIMEOUT, Reward.NO_ANSWER, Reward.OK)
                   for r in got)
        assert w._proc.is_alive()
    finally:
        w.close()


def test_long_answers_are_cut_before_parsing(monkeypatch):
    from relift_ray.core import scoring
    response = "\\boxed{5} " + "x" * 50
    assert math_reward(response, "5", "whole").value == 1.0
    monkeypatch.setattr(scoring, "MAX_ANSWER_CHARS", 20)  # the child sets it from the config
    assert math_reward(response, "5", "whole").value == 0.0  # its last 20 characters: no 5
    assert math_reward("x" * 50 + " \\boxed{5}", "5", "whole").value == 1.0


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_the_memory_limit_stops_an_answer_before_its_time_limit():
    # under 300 MB, 2^(2^32) runs out of memory in math-verify (which scores it 0) before
    # the 8 s limit; without a limit it grows for as long as it is let run
    w = RewardWorker("boxed", timeout_s=8.0, memory_mb=300)
    try:
        got = w.score([("\\boxed{2^{2^{32}}}", "1"), ("\\boxed{7}", "7")])
        assert [r.value for r in got] == [0.0, 1.0]
        assert w.stats.timeouts == 0 and w.stats.restarts == 0 and w._proc.is_alive()
    finally:
        w.close()
