"""One job per run folder: ``RunLock`` holds an exclusive lock on ``<run folder>/.lock`` for
as long as the job runs. A second job with the same name and output folder (which would
interleave its checkpoints and outputs with the first's) stops at once, naming the job that
holds it. The lock is the kernel's (``flock``): it goes with the process, so a job that
crashed leaves nothing to clean up. It holds on one machine's file system; on storage shared
by several machines, give each run its own name."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from relift_ray.errors import ConfigError


class RunLock:
    def __init__(self, run_dir: Path, what: str = "run"):
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"{what} folder {run_dir} is in use by another job ({holder}): "
                              f"stop it, or give this one another name=") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                       "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())

    def _holder(self) -> str:
        try:
            h = json.loads(self.path.read_text())
            return f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError):
            return "pid unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
