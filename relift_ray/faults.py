"""Fault injection for the recovery tests and the chaos script: ``train.kill``.

``train.kill: [generator@14, scheduler@7]`` kills that actor's process with SIGKILL (what
``kill -9`` does) once, when step 14 (7) starts; ``generator@14:stop`` stops it with SIGSTOP
instead (a hung driver or GPU, a swapping node: alive to the OS and to Ray, answering
nothing), which only the deadlines of the calls on it end (``cluster.*_deadline_s``; a
learner cannot be stopped this way). Who pulls the trigger:

- ``learner@s``: the last learner rank kills itself before its update of step s;
- ``scheduler@s``: the scheduler kills itself when it starts making step s's batch;
- ``reward@s``: the scheduler kills ``reward-0`` when it starts making step s's batch, then
  goes on (its next call to that actor meets the death);
- ``scorer@s``: the same for ``reward-0``'s scoring process (the OOM killer, a crash in a
  parser), not the actor;
- ``generator@s``: the scheduler kills ``generator-0`` once the step's weight load is in and
  before its generate call is sent (the call meets the death);
- ``checkpoint@s``: the last learner rank truncates a file of the run's newest checkpoint
  (a crash mid-write, a full disk) when step s starts; nothing notices until a failure
  makes the run resume (pair it with ``learner@s``), which then skips that checkpoint.

Each kill happens once per run: a marker file in ``output_dir`` remembers it, so a restarted
actor that replays step s goes on. In an in-process run (the comparison job) a kill raises
``InjectedFailure`` instead. Imports no Ray.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

KINDS = ("learner", "scheduler", "generator", "reward", "scorer", "checkpoint")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
STOPPABLE = ("scheduler", "generator", "reward")


class InjectedFailure(RuntimeError):
    """A kill from ``train.kill`` in a run that has no actors to kill."""


def parse(specs) -> list[tuple[str, int, str]]:
    """``["generator@14", "scheduler@7:stop"]`` -> ``[("generator", 14, "kill"),
    ("scheduler", 7, "stop")]``; ValueError says what is wrong."""
    out = []
    for spec in specs or []:
        kind, sep, rest = str(spec).partition("@")
        step, _, action = rest.partition(":")
        action = action or "kill"
        if (not sep or kind not in KINDS or not step.isdigit() or int(step) < 1
                or action not in ACTIONS):
            raise ValueError(f"{spec!r}: expected <actor>@<step>[:stop], actor one of "
                             f"{', '.join(KINDS)}, step >= 1")
        if action == "stop" and kind not in STOPPABLE:
            raise ValueError(f"{spec!r}: only {', '.join(STOPPABLE)} can be stopped")
        out.append((kind, int(step), action))
    return out


def due(cfg, kind: str, step: int) -> str:
    """The action ("kill" or "stop") ``kind`` meets at ``step`` now, "" for none; each fires
    once per run (the marker is written here)."""
    for k, s, action in parse(cfg.train.kill):
        if (k, s) != (kind, step):
            continue
        verb = "killed" if action == "kill" else "stopped"
        marker = (Path(cfg.output_dir).expanduser().resolve()
                  / f"{cfg.name}.{verb}-{kind}-{step}")
        if marker.exists():
            continue
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"train.kill: {kind}@{step}:{action}\n")
        return action
    return ""


def corrupt_checkpoint(run_storage: Path, step: int, world: int, wait_s: float = 120) -> Path:
    """Truncate to half the largest file of step ``step``'s checkpoint under ``run_storage``
    (Ray Train's folder of the run), once every rank's part of it is there; the file."""
    end = time.monotonic() + wait_s
    while True:
        for d in sorted(Path(run_storage).glob("checkpoint_*"), reverse=True):
            meta = d / "meta.json"
            if (meta.is_file() and json.loads(meta.read_text())["step"] == step
                    and len(list(d.glob("complete-r*.json"))) == world):
                victim = max((p for p in d.rglob("*") if p.is_file()),
                             key=lambda p: p.stat().st_size)
                os.truncate(victim, victim.stat().st_size // 2)
                time.sleep(5)  # Ray Train registers the upload it has finished
                return victim
        if time.monotonic() > end:
            raise RuntimeError(f"train.kill checkpoint: no complete checkpoint of step {step} "
                               f"in {run_storage} after {wait_s:g} s")
        time.sleep(0.5)


def kill(pid: int | None = None, action: str = "kill") -> None:
    """SIGKILL a process (this one by default): no clean-up, no exit handlers, as kill -9;
    ``action="stop"``: SIGSTOP, as kill -STOP."""
    os.kill(pid or os.getpid(), ACTIONS[action])
