"""Answer extraction, math-verify scoring, and the reward worker's hard time limit."""
import pytest

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
