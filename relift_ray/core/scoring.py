"""The reward of one answer: answer extraction and math-verify scoring.

``math_reward(response, truth, extraction)`` is the paper's reward: 1 if math-verify finds the
extracted answer equal to the ground truth, else 0 (no answer found = 0). It runs math-verify
without its own timeout; the reward worker (relift_ray.rollout.rewards) runs it in a child
process with a hard limit from the outside.
"""
from __future__ import annotations

import re

from relift_ray.records import Reward

EXTRACTIONS = ("whole", "after_think", "think_or_whole", "boxed")


# an answer both sides write as a plain integer: ASCII digits, no leading zero, no "-0"
# (math-verify reads neither "７" nor, outside \boxed{}, "-07"; those go to it)
_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,29}")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


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
