"""The reward of one answer: answer extraction and math-verify scoring.

Two verifiers (``data.verifier``), each a function (response, truth, extraction) -> Reward:

- ``math_reward`` (``current``): 1 if the installed math-verify finds the extracted answer
  equal to the ground truth, else 0 (no answer found = 0), with two exact-match shortcuts.
- ``released_reward`` (``released``): the released reward's verdicts. The release pins
  math-verify 0.6.0 (with latex2sympy2_extended 1.0.9); newer versions judge two things
  differently, and this function gives 0.6.0's verdict on both while running the installed
  library: several \\boxed{} in a response are one answer only when nothing but "and", "or"
  or "," stands between them (else the last box is the answer; newer versions merge nearby
  boxes into a set, so a response that corrects itself scores 0), and a percentage equals
  only its value (42% = 0.42, not 42). The ground truth is read as ``$truth$``, parsing and
  verifying each have math-verify's own 3 s limit, and the only shortcut left is two plain
  integers. ``tests/test_rewards.py`` checks it against 0.6.0's verdicts on a corpus of
  answer variants (``scripts/released_verdicts.py`` makes them).

Both run math-verify without a limit of their own beyond that; the reward worker
(relift_ray.rollout.rewards) runs them in a child process with a hard limit from the outside.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager

from relift_ray.records import Reward

EXTRACTIONS = ("whole", "after_think", "think_or_whole", "boxed")


# the reward worker's child sets it (cluster.reward_max_answer_chars): an extracted answer
# longer than this is cut to its last characters before any parsing (0 = no cut)
MAX_ANSWER_CHARS = 0


def _cut(part: str) -> str:
    return part[-MAX_ANSWER_CHARS:] if MAX_ANSWER_CHARS and len(part) > MAX_ANSWER_CHARS else part


# an answer both sides write as a plain integer: ASCII digits, no leading zero, no "-0"
# (math-verify reads neither "７" nor, outside \boxed{}, "-07"; those go to it)
_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,29}")


def _closing_brace(text: str, brace: int, end: int | None = None) -> int | None:
    """The index of the "}" that closes the "{" at ``brace`` (before ``end``), or None."""
    depth = 0
    for i in range(brace, len(text) if end is None else end):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    brace = start + len("\\boxed")
    close = _closing_brace(text, brace)
    return None if close is None else text[brace + 1:close]


THINK_END = "</think>"


def extract_answer(response: str, extraction: str = "boxed") -> str | None:
    """The part of a response the verifier sees, or None when there is no answer.

    - ``whole``: all of it.
    - ``after_think``: the released training reward's. The text after the first
      "</think>", up to a second one if the model wrote another (the released code keeps
      ``split("</think>")[1]``). No "</think>" at all scores 0.
    - ``think_or_whole``: the released evaluation script's. The same piece when there is a
      "</think>", else the whole text.
    - ``boxed``: the last \\boxed{...}.
    """
    if extraction == "whole":
        return response
    if extraction in ("after_think", "think_or_whole"):
        if THINK_END in response:
            return response.split(THINK_END)[1]
        return None if extraction == "after_think" else response
    if extraction == "boxed":
        inner = last_boxed(response)
        return None if inner is None else f"\\boxed{{{inner}}}"
    raise ValueError(f"answer extraction {extraction!r}: must be one of {EXTRACTIONS}")


def math_reward(response: str, truth: str, extraction: str = "boxed",
                exact_match: bool = True) -> Reward:
    """The reward (0 or 1) and status of one response; runs math-verify without its own timeout.
    Two shortcuts skip the parse: the answer is character for character the ground truth, or
    both are plain integers (compared as numbers). ``exact_match=False`` sends every answer
    through math-verify."""
    from math_verify import parse, verify

    part = extract_answer(response, extraction)
    if part is None:
        return Reward(0.0, Reward.NO_ANSWER)
    part = _cut(part)
    if exact_match and (part == f"\\boxed{{{truth}}}" or part.strip() == truth.strip()):
        return Reward(1.0, Reward.OK)  # character-for-character the ground truth: no parsing needed
    if exact_match and _INTEGER.fullmatch(truth.strip()):
        inner = part[len("\\boxed{"):-1] if extraction == "boxed" else part
        if _INTEGER.fullmatch(inner.strip()):  # two plain integers: equal values or not
            return Reward(float(int(inner) == int(truth)), Reward.OK)
    pred = parse(part, parsing_timeout=None)
    if not pred:
        return Reward(0.0, Reward.NO_ANSWER)
    gold = parse(f"\\boxed{{{truth}}}", parsing_timeout=None)
    if not gold:
        gold = parse(f"${truth}$", parsing_timeout=None)
    return Reward(1.0 if verify(gold, pred, timeout_seconds=None) else 0.0, Reward.OK)


def verified_reward(response: str, truth: str, extraction: str = "boxed") -> Reward:
    """``math_reward`` with every answer through math-verify, no shortcut: the check
    ``relift data fetch`` makes of each gold answer (run by the reward worker, with its limit)."""
    return math_reward(response, truth, extraction, exact_match=False)


# --------------------------------------------------------------- the released reward's verdicts

_SEPARATOR = re.compile(r"\s*(?:and|or|,)\s*")


def _boxes_as_released(text: str, mode: str = "last") -> str:
    """The answer math-verify 0.6.0 reads from the boxes of ``text`` (latex2sympy2_extended
    1.0.9's rule): from the last \\boxed{} (or \\fbox{}) backwards, an earlier box joins the
    answer only when the text between the two is a bare "and", "or" or ","; contents are
    joined by commas. No box: the text itself. ``mode="all"``: every box."""
    found: list[str] = []
    end = len(text)  # the search goes right to left, below the last box taken
    previous_start = None
    while True:
        start = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if start < 0:
            break
        brace = start + (6 if text.startswith("\\boxed", start) else 5)
        while brace < end and text[brace].isspace():
            brace += 1
        if brace >= end:
            break
        if text[brace] != "{":  # a box without braces ends the answer
            if not found:
                found.append(text[brace:])
            break
        close = _closing_brace(text, brace, end)
        if close is None:  # unbalanced: the rest is the answer, if nothing came before
            if not found:
                found.append(text[brace:])
            break
        if mode == "last" and previous_start is not None and \
                not _SEPARATOR.fullmatch(text[close + 1:previous_start]):
            break
        found.append(text[brace + 1:close].strip())
        previous_start = end = start
    return ",".join(reversed(found)) if found else text


def _percent_as_released(expr, default=None):
    """math-verify 0.6.0 compares a percentage by its value: 9% is 9/100, not 9."""
    from math_verify.grader import safe_sympy_doit
    return safe_sympy_doit(expr)


@contextmanager
def _math_verify_0_6_rules():
    """The installed math-verify with 0.6.0's two rules (boxes, percentages) for the block."""
    import latex2sympy2_extended.math_normalization as norm
    import math_verify.grader as grader
    saved = norm.extract_boxed_content, getattr(grader, "get_pct_val", None)
    norm.extract_boxed_content = _boxes_as_released
    if saved[1] is not None:
        grader.get_pct_val = _percent_as_released
    try:
        yield
    finally:
        norm.extract_boxed_content = saved[0]
        if saved[1] is not None:
            grader.get_pct_val = saved[1]


RELEASED_LIMIT_S = 3  # math-verify 0.6.0's own parse and verify limits


def released_reward(response: str, truth: str, extraction: str = "after_think") -> Reward:
    """The released reward's verdict on one response (see the module docstring)."""
    from math_verify import parse, verify

    part = extract_answer(response, extraction)
    if part is None:
        return Reward(0.0, Reward.NO_ANSWER)
    part = _cut(part)
    inner = part.strip()
    if inner.startswith("\\boxed{") and inner.endswith("}") and inner.count("\\boxed") == 1:
        inner = inner[len("\\boxed{"):-1].strip()
    if _INTEGER.fullmatch(truth.strip()) and _INTEGER.fullmatch(inner):
        return Reward(float(int(inner) == int(truth)), Reward.OK)  # two plain integers
    # math-verify's limits use signals, which work on the main thread only
    limit = RELEASED_LIMIT_S if threading.current_thread() is threading.main_thread() else None
    with _math_verify_0_6_rules():
        pred = parse(part, parsing_timeout=limit)
        if not pred:
            return Reward(0.0, Reward.NO_ANSWER)
        gold = parse(f"${truth}$", parsing_timeout=limit)
        return Reward(1.0 if verify(gold, pred, timeout_seconds=limit) else 0.0, Reward.OK)


VERIFIERS = {"current": "relift_ray.core.scoring:math_reward",
             "released": "relift_ray.core.scoring:released_reward"}
