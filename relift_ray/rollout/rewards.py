"""The reward worker: math-verify in a child process with a hard time limit per answer.

``RewardWorker`` runs the scoring function (``relift_ray.core.scoring.math_reward``) in a
child *process* (math-verify's own timeout uses signals and works only on a main thread) and
enforces a hard per-answer time limit from the outside: an answer that takes longer costs one
timeout (reward 0), the child is killed and restarted, and scoring goes on. A job makes each
worker a Ray actor (``reward-0``, ...); tests use it in-process.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import time
from dataclasses import dataclass

from relift_ray.core.scoring import EXTRACTIONS
from relift_ray.records import Reward


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
                conn.send(Reward(0.0, f"{Reward.ERROR}: {type(e).__name__}: {e}"[:200]))


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
                 fn: str = "relift_ray.core.scoring:math_reward"):
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
                reward = Reward(0.0, Reward.TIMEOUT) if late else self._conn.recv()
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
