"""The job's console: its own progress lines, warnings that matter and the summary.

Ray forwards every actor's stdout to the driver by default, and Ray Train's controller and
workers write a good deal there (placement-group polling, checkpoint uploads, reports). A job
started by relift_ray connects with ``log_to_driver=False`` instead, so all of that stays in
Ray's log files (``/tmp/ray/session_latest/logs``, and the dashboard), and the lines relift_ray
itself means for the user travel through one small actor: ``say(line)`` in any actor or worker
sends it there, and the driver prints what arrives (``Console``). Outside a job, or where the
actor does not exist, ``say`` prints.

    console = Console.start()      # driver, after ray.init
    say("[step 3/60] ...")         # anywhere
    console.stop()                 # prints what is left
"""
from __future__ import annotations

import sys
import threading
import time

ACTOR_NAME = "relift-console"
_handle = None
_looked_up = False


class _Sink:
    """The actor that collects the lines (a plain class; the driver makes it an actor)."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def say(line: str) -> None:
    """Show ``line`` on the job's console (the driver's stdout)."""
    global _handle, _looked_up
    if not _looked_up:
        _looked_up = True
        if "ray" in sys.modules:
            # a process without Ray prints: say() never imports it
            import ray
            if ray.is_initialized():
                try:
                    _handle = ray.get_actor(ACTOR_NAME)
                except ValueError:
                    _handle = None
    if _handle is None:
        _print(line)
        return
    try:
        _handle.write.remote(line)
    except Exception:  # the console went away (the job is ending): print instead
        _print(line)


class Console:
    """Driver side: the collecting actor and a thread that prints what reaches it."""

    def __init__(self, actor, interval_s: float = 0.2):
        self.actor, self.interval_s = actor, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relift-console", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls) -> "Console":
        """The job's console; this process's ``say`` writes to it (a process that runs one
        job after another, as the tests and the chaos script do, gets each job's)."""
        global _handle, _looked_up
        # a process without Ray prints: say() never imports it
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: a lost worker node must not take the job's console with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(_Sink).options(name=ACTOR_NAME, num_cpus=0, get_if_exists=True,
                                          scheduling_strategy=here).remote()
        _handle, _looked_up = actor, True
        return cls(actor)

    def _flush(self) -> None:
        # a process without Ray prints: say() never imports it
        import ray
        for line in ray.get(self.actor.drain.remote()):
            _print(line)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush()
            except Exception:
                return
            time.sleep(self.interval_s)

    def stop(self) -> None:
        global _handle, _looked_up
        # a process without Ray prints: say() never imports it
        import ray
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._flush()
        finally:
            ray.kill(self.actor)
            if _handle is self.actor:  # later lines print, or go to the next job's console
                _handle, _looked_up = None, False
