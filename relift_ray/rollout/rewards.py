"""The reward worker: math-verify in a child process with a hard time limit per answer.

``RewardWorker`` runs the scoring function (``relift_ray.core.scoring.math_reward``) in a
child *process* (math-verify's own timeout uses signals and works only on a main thread) and
enforces a hard per-answer time limit from the outside: an answer that takes longer costs one
timeout (reward 0), the child is killed and restarted, and scoring goes on. The child runs
under a memory limit (an answer that needs more scores 0, status ``memory``); a child that
dies (the kernel's OOM killer, a crash in a parser) is noticed, counted and restarted, and
the answers it held are scored again; one it dies on twice scores 0 (``killed``). A job makes each
worker a Ray actor (``reward-0``, ...); tests use it in-process.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import time
from dataclasses import dataclass

from relift_ray.core.scoring import EXTRACTIONS, VERIFIERS
from relift_ray.records import Reward


def _child(conn, fn_path: str, extraction: str, memory_mb: int = 0,
           max_answer_chars: int = 0) -> None:
    """The scoring process: takes a list of (response, truth) at a time and sends back one
    Reward per answer as soon as it is scored, in order (the parent times each one). Its
    address space is capped at ``memory_mb`` (an answer that needs more scores 0, status
    ``memory``), and the scorers cut each extracted answer to its last ``max_answer_chars``."""
    import logging
    import resource

    from relift_ray.core import scoring  # the module whose answer cut this process sets
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": ours is outside
    if memory_mb:
        limit = memory_mb * 2 ** 20
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
    scoring.MAX_ANSWER_CHARS = max_answer_chars
    try:  # math-verify's import (~0.5 s) here, not inside the first answer's time limit
        import math_verify  # noqa: F401
    except ImportError:
        pass
    module, name = fn_path.split(":")
    fn = getattr(importlib.import_module(module), name)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        for response, truth in msg:
            try:
                conn.send(Reward(*fn(response, truth, extraction)))
            except MemoryError:
                conn.send(Reward(0.0, Reward.MEMORY))
            except Exception as e:  # a verifier bug must not kill the worker
                conn.send(Reward(0.0, f"{Reward.ERROR}: {type(e).__name__}: {e}"[:200]))


@dataclass
class RewardStats:
    scored: int = 0
    timeouts: int = 0
    no_answer: int = 0
    errors: int = 0
    memory: int = 0  # answers past the child's memory limit
    killed: int = 0  # answers the child died on twice
    deaths: int = 0  # the child found dead (killed, crashed) and restarted
    restarts: int = 0
    seconds: float = 0.0


def worker_args(cfg, extraction: str | None = None) -> tuple:
    """RewardWorker's arguments from a run's config (``extraction`` overrides the data's)."""
    c = cfg.cluster
    return (extraction or cfg.data.answer_extraction, c.reward_timeout_s,
            VERIFIERS[cfg.data.verifier], c.reward_memory_mb, c.reward_max_answer_chars)


class RewardWorker:
    def __init__(self, extraction: str = "boxed", timeout_s: float = 5.0,
                 fn: str = "relift_ray.core.scoring:math_reward", memory_mb: int = 0,
                 max_answer_chars: int = 0):
        if extraction not in EXTRACTIONS:
            raise ValueError(f"answer extraction {extraction!r}: must be one of {EXTRACTIONS}")
        self.extraction, self.timeout_s, self.fn = extraction, timeout_s, fn
        self.memory_mb, self.max_answer_chars = memory_mb, max_answer_chars
        self.stats = RewardStats()
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._start()

    def _start(self) -> None:
        self._conn, child_conn = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child, args=(child_conn, self.fn, self.extraction, self.memory_mb,
                                 self.max_answer_chars), daemon=True, name="relift-reward")
        self._proc.start()
        child_conn.close()
        # first answer pays the import; warm up outside the per-answer limit
        try:
            self._conn.send([("\\boxed{1}", "1")])
            if not self._conn.poll(120):
                raise RuntimeError("reward worker process did not start within 120 s")
            self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise RuntimeError(f"reward worker process died while starting (exit code "
                               f"{self._proc.exitcode}; cluster.reward_memory_mb="
                               f"{self.memory_mb} too low?)") from None

    def _restart(self) -> None:
        self._proc.kill()
        self._proc.join(5)
        self.stats.restarts += 1
        self._start()

    def _died(self) -> None:
        """The child is gone (killed by the kernel, a crash in a parser): count it, start
        another."""
        self.stats.deaths += 1
        self._restart()

    def score(self, pairs: list[tuple[str, str]]) -> list[Reward]:
        """[(response, truth)] -> [Reward]. The pairs go to the child in one message and come
        back one by one; each answer has ``timeout_s`` from the moment the previous one came
        back (the child scores them back to back). One that takes longer scores 0 (TIMEOUT):
        the child is killed, restarted, and given the answers after it. A child found dead
        is restarted and given the answers it had not sent back (scoring is pure); one that
        dies twice on the same answer scores it 0 (KILLED)."""
        out: list[Reward] = []
        deaths_on: dict[int, int] = {}  # answer index -> children that died on it
        t0 = time.perf_counter()
        while len(out) < len(pairs):
            try:
                self._conn.send(pairs[len(out):])
            except OSError:  # dead since the last call: no answer to blame
                self._died()
                continue
            while len(out) < len(pairs):
                late, dead = not self._conn.poll(self.timeout_s), False
                if late:
                    reward = Reward(0.0, Reward.TIMEOUT)
                else:
                    try:
                        reward = self._conn.recv()
                    except (EOFError, OSError):
                        dead, i = True, len(out)
                        deaths_on[i] = deaths_on.get(i, 0) + 1
                        self._died()
                        if deaths_on[i] < 2:
                            break  # the new child scores it again
                        reward = Reward(0.0, Reward.KILLED)
                self.stats.scored += 1
                self.stats.timeouts += reward.timed_out
                self.stats.no_answer += reward.no_answer
                self.stats.errors += reward.failed
                self.stats.memory += reward.status == Reward.MEMORY
                self.stats.killed += reward.status == Reward.KILLED
                out.append(reward)
                if late:
                    self._restart()
                if late or dead:
                    break  # the rest go to the new child
        self.stats.seconds += time.perf_counter() - t0
        return out

    def get_stats(self) -> dict:
        return dict(vars(self.stats))

    def child_pid(self) -> int:
        """The scoring process's id (train.kill scorer@s, relift_ray.faults)."""
        return self._proc.pid

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
