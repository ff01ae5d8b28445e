"""Rewards: answer extraction, math-verify scoring, and the reward worker.

``math_reward(response, truth, extraction)`` is the paper's reward: 1 if math-verify finds the
extracted answer equal to the ground truth, else 0 (no answer found = 0).

``RewardWorker`` runs the scoring function in a child *process* (math-verify's own timeout
uses signals and works only on a main thread) and enforces a hard per-answer time limit from
the outside: an answer that takes longer costs one timeout (reward 0), the child is killed
and restarted, and scoring goes on. A job makes each worker a Ray actor (``reward-0``, ...).
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import re
import time
from dataclasses import dataclass

from relift_ray.records import Reward

EXTRACTIONS = ("whole", "after_think", "think_or_whole", "boxed")

OK, NO_ANSWER, TIMEOUT, ERROR = Reward.OK, Reward.NO_ANSWER, Reward.TIMEOUT, Reward.ERROR
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
        return Reward(0.0, NO_ANSWER)
    if exact_match and (part == f"\\boxed{{{truth}}}" or part.strip() == truth.strip()):
        return Reward(1.0, OK)  # character-for-character the ground truth: no parsing needed
    if exact_match and _INTEGER.fullmatch(truth.strip()):
        inner = part[len("\\boxed{"):-1] if extraction == "boxed" else part
        if _INTEGER.fullmatch(inner.strip()):  # two plain integers: equal values or not
            return Reward(float(int(inner) == int(truth)), OK)
    pred = parse(part, parsing_timeout=None)
    if not pred:
        return Reward(0.0, NO_ANSWER)
    gold = parse(f"\\boxed{{{truth}}}", parsing_timeout=None)
    if not gold:
        gold = parse(f"${truth}$", parsing_timeout=None)
    return Reward(1.0 if verify(gold, pred, timeout_seconds=None) else 0.0, OK)


def _child(conn, fn_path: str, extraction: str) -> None:
    """The scoring process: takes a list of (response, truth) at a time and sends back one
    Reward per answer as soon as it is scored, in order (the parent times each one)."""
    import logging
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": ours is outside
    module, name = fn_path.split(":")
    fn = getattr(importlib.import_module(module), name)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        for response, truth in msg:
            try:
                conn.send(Reward(*fn(response, truth, extraction)))
            except Exception as e:  # a verifier bug must not kill the worker
                conn.send(Reward(0.0, f"{ERROR}: {type(e).__name__}: {e}"[:200]))


@dataclass
class RewardStats:
    scored: int = 0
    timeouts: int = 0
    no_answer: int = 0
    errors: int = 0
    restarts: int = 0
    seconds: float = 0.0


class RewardWorker:
    def __init__(self, extraction: str = "boxed", timeout_s: float = 5.0,
                 fn: str = "relift_ray.rewards:math_reward"):
        if extraction not in EXTRACTIONS:
            raise ValueError(f"answer extraction {extraction!r}: must be one of {EXTRACTIONS}")
        self.extraction, self.timeout_s, self.fn = extraction, timeout_s, fn
        self.stats = RewardStats()
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._start()

    def _start(self) -> None:
        self._conn, child_conn = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_child, args=(child_conn, self.fn, self.extraction),
                                       daemon=True, name="relift-reward")
        self._proc.start()
        child_conn.close()
        # first answer pays the import; warm up outside the per-answer limit
        self._conn.send([("\\boxed{1}", "1")])
        if not self._conn.poll(120):
            raise RuntimeError("reward worker process did not start within 120 s")
        self._conn.recv()

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join(5)
        self.stats.restarts += 1
        self._start()

    def score(self, pairs: list[tuple[str, str]]) -> list[Reward]:
        """[(response, truth)] -> [Reward]. The pairs go to the child in one message and come
        back one by one; each answer has ``timeout_s`` from the moment the previous one came
        back (the child scores them back to back). One that takes longer scores 0 (TIMEOUT):
        the child is killed, restarted, and given the answers after it."""
        out: list[Reward] = []
        t0 = time.perf_counter()
        while len(out) < len(pairs):
            self._conn.send(pairs[len(out):])
            while len(out) < len(pairs):
                late = not self._conn.poll(self.timeout_s)
                reward = Reward(0.0, TIMEOUT) if late else self._conn.recv()
                self.stats.scored += 1
                self.stats.timeouts += reward.timed_out
                self.stats.no_answer += reward.no_answer
                self.stats.errors += reward.failed
                out.append(reward)
                if late:
                    self._restart()  # the rest go to the new child
                    break
        self.stats.seconds += time.perf_counter() - t0
        return out

    def get_stats(self) -> dict:
        return dict(vars(self.stats))

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
