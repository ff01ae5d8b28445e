"""Fault injection for the recovery tests and the chaos script: ``train.kill``.

``train.kill: [generator@14, scheduler@7]`` kills that actor's process with SIGKILL (what
``kill -9`` does) once, when step 14 (7) starts. Who pulls the trigger:

- ``learner@s``: the last learner rank kills itself before its update of step s;
- ``scheduler@s``: the scheduler kills itself when it starts making step s's batch;
- ``generator@s`` / ``reward@s``: the scheduler kills ``generator-0`` / ``reward-0`` when it
  starts making step s's batch, then goes on (its next call to that actor meets the death).

Each kill happens once per run: a marker file in ``output_dir`` remembers it, so a restarted
actor that replays step s goes on. In an in-process run (the comparison job) a kill raises
``InjectedFailure`` instead. Imports no Ray.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

KINDS = ("learner", "scheduler", "generator", "reward")


class InjectedFailure(RuntimeError):
    """A kill from ``train.kill`` in a run that has no actors to kill."""


def parse(specs) -> list[tuple[str, int]]:
    """``["generator@14", ...]`` -> ``[("generator", 14), ...]``; ValueError says what is wrong."""
    out = []
    for spec in specs or []:
        kind, sep, step = str(spec).partition("@")
        if not sep or kind not in KINDS or not step.isdigit() or int(step) < 1:
            raise ValueError(f"{spec!r}: expected <actor>@<step>, actor one of "
                             f"{', '.join(KINDS)}, step >= 1")
        out.append((kind, int(step)))
    return out


def due(cfg, kind: str, step: int) -> bool:
    """Whether ``kind`` dies at ``step`` now; true once per run (the marker is written here)."""
    if (kind, step) not in parse(cfg.train.kill):
        return False
    marker = Path(cfg.output_dir).expanduser().resolve() / f"{cfg.name}.killed-{kind}-{step}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"train.kill: {kind}@{step}\n")
    return True


def kill(pid: int | None = None) -> None:
    """SIGKILL a process (this one by default): no clean-up, no exit handlers, as kill -9."""
    os.kill(pid or os.getpid(), signal.SIGKILL)
