"""Small concurrency helpers shared by the roles and the jobs: a function run in a background
thread whose result (or error) is collected later, and a free TCP port."""
from __future__ import annotations

import socket
import threading


class Background:
    """``fn()`` in a daemon thread, started at once; ``result(timeout)`` waits for it and
    returns its value or re-raises its error (``TimeoutError`` if it is still running)."""

    def __init__(self, fn, name: str = "relift-background"):
        self.box: dict = {}
        self.thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            self.box["error"] = e

    def result(self, timeout: float | None = None):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"{self.thread.name} still running after {timeout:g} s")
        if "error" in self.box:
            raise self.box["error"]
        return self.box.get("value")


def free_port(host: str = "") -> int:
    """A TCP port free on ``host`` ("" = every interface) at the time of the call."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` at the time of the call.

    All ``n`` sockets stay bound until the last is chosen: asking one at a time may hand the
    same port out twice, since each is released before the next is asked for."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
