"""The generators of a run as one group: a step's chunks fanned out over them, a generator
that dies revived with the step's weights, and the weight loads queued for them.

``GeneratorGroup`` works with Ray actor handles (a job) and with plain objects (tests and the
in-process runner) alike. A generator actor that dies mid-step is restarted by Ray
(max_restarts); the group waits for it, reloads the weight version the step samples with
(object-store sync keeps a reference to it, ``remember``) and samples its chunk again with the
same seed, so the step is the one it would have been. A generator whose ``generate`` runs
past ``cluster.generate_deadline_s`` is treated the same way: killed (``ray.kill`` ends a
process stopped with SIGSTOP too), restarted by Ray, revived and asked again; one whose weight
load runs past ``generator.sync_timeout_s`` is killed and fails the step.
"""
from __future__ import annotations

import threading
import time

import ray

from relift_ray.records import check_versions
from relift_ray.rollout.calls import call_all, get_or_kill, is_actor, kill_as_dead
from relift_ray.tracking.console import say

GENERATOR_RETRIES = 3  # a generator may die this many times within one step
GENERATOR_RESTART_TIMEOUT_S = 600


class GeneratorGroup:
    def __init__(self, generators: list, weight_sync: str = "object_store",
                 sync_timeout_s: float = 300.0, generate_deadline_s: float | None = None):
        self.generators = generators
        self.weight_sync = weight_sync  # named in the error when a revived one cannot reload
        self.sync_timeout_s = sync_timeout_s  # a weight load slower than this fails the step
        self.generate_deadline_s = generate_deadline_s  # a generate call slower: a death
        self.kept: tuple[int, object] | None = None  # (version, object ref): for revivals
        self._lock = threading.Lock()
        self._loads: tuple = (None, [])  # (version, each generator's pending load)

    def __len__(self) -> int:
        return len(self.generators)

    # ------------------------------------------------------------ weights
    def remember(self, version: int, ref) -> None:
        """The object-store reference of weight version ``version``: what a restarted
        generator loads before it samples again."""
        self.kept = (version, ref)

    def queue_loads(self, version: int, ref) -> None:
        """Every generator actor loads ``ref`` as version ``version``, not waited for here:
        each load queues at its generator before the group's next generate call there (Ray
        runs one caller's calls to an actor in order); ``generate`` collects their results,
        so a failed load fails that step."""
        self.remember(version, ref)
        loads = [g.load_weights.remote(version, ref) for g in self.generators]
        with self._lock:
            self._loads = (version, loads)

    def pending_loads(self) -> tuple:
        """(version, loads) queued by ``queue_loads`` and not collected yet."""
        with self._lock:
            return self._loads

    def drop_pending(self) -> None:
        """Forget queued loads (a restored scheduler: the learners publish again)."""
        with self._lock:
            self._loads = (None, [])

    # ------------------------------------------------------------ sampling
    def generate(self, chunks: list, params: list, version: int, step=None,
                 fault=None) -> list:
        """Each generator's completions for its chunk, sampled with weight version
        ``version`` (for step ``step``, named in warnings); a generator actor that dies, or
        outlasts its deadline, is revived and samples its chunk again. ``fault``: called
        once the weight loads are in, before the calls are sent (train.kill,
        relift_ray.faults)."""
        if not self.generators or not is_actor(self.generators[0]):
            return call_all(self.generators, "generate", list(zip(chunks, params)))
        with self._lock:  # the weight loads queued before this step
            (loaded, loads), self._loads = self._loads, (None, [])
        deadline = time.monotonic() + self.sync_timeout_s
        for i, load in enumerate(loads):
            try:
                check_versions([self._loaded(i, load, loaded, deadline)], loaded)
            except ray.exceptions.RayActorError:
                pass  # the generator died: its generate call fails too and revives it below
        if fault is not None:
            fault()
        refs = [g.generate.remote(c, p) for g, c, p in zip(self.generators, chunks, params)]
        end = None if self.generate_deadline_s is None else time.monotonic() + \
            self.generate_deadline_s
        return [self._collect(i, ref, chunks[i], params[i], version, step, end)
                for i, ref in enumerate(refs)]

    def _loaded(self, i: int, load, version: int, deadline: float) -> int:
        """What generator ``i``'s load of weight version ``version`` returned; a load that
        fails or outlasts ``deadline`` fails the step with the reason (never a step sampled
        with the old weights); one that outlasts it is a hung generator: it is killed too, and
        Ray restarts it."""
        try:
            return ray.get(load, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            kill_as_dead(self.generators[i], f"generator {i}: load_weights of version "
                                             f"{version}", self.sync_timeout_s)
            raise TimeoutError(
                f"generator {i} did not load weight version {version} within "
                f"{self.sync_timeout_s:g} s (generator.sync_timeout_s); the step stops here "
                f"rather than sample with older weights") from None
        except ray.exceptions.RayTaskError as e:
            raise RuntimeError(f"generator {i} failed to load weight version {version}: "
                               f"{type(e.cause).__name__}: {e.cause}") from e

    def _collect(self, i: int, ref, chunk, params, version: int, step, end: float | None):
        for attempt in range(GENERATOR_RETRIES + 1):
            try:  # a retry gets the whole deadline again
                within = None if end is None else (max(0.0, end - time.monotonic())
                                                   if attempt == 0 else
                                                   self.generate_deadline_s)
                out = get_or_kill(ref, self.generators[i], within, f"generator {i}",
                                  "generate", step)
            except ray.exceptions.RayActorError as e:
                if attempt == GENERATOR_RETRIES:
                    raise
                self.revive(i, version, e)
            else:
                held = {c.weight_version for group in out for c in group}
                if not (held == {0} and version > 0) or attempt == GENERATOR_RETRIES:
                    return out  # a wrong version left here fails the step's check
                # a call queued while Ray restarted the actor ran on the base weights
                self.revive(i, version, RuntimeError("restarted with weight version 0"))
            ref = self.generators[i].generate.remote(chunk, params)

    def revive(self, i: int, version: int, error: Exception) -> None:
        """Wait for Ray to restart generator ``i``, then load weight version ``version``
        into it (a restart holds the base weights, version 0)."""
        gen = self.generators[i]
        say(f"[scheduler] generator {i} died ({type(error).__name__}); waiting for Ray to "
            f"restart it, then reloading weight version {version}")
        deadline = time.monotonic() + GENERATOR_RESTART_TIMEOUT_S
        while True:
            try:  # calls queue while Ray restarts the actor
                held = ray.get(gen.get_version.remote(), timeout=60)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"generator {i} did not come back within "
                                       f"{GENERATOR_RESTART_TIMEOUT_S} s") from error
                time.sleep(0.5)
        if held == version or version == 0:
            return
        if self.kept is None or self.kept[0] != version:
            raise RuntimeError(
                f"generator {i} restarted holding weight version {held}; this scheduler has no "
                f"copy of version {version} to reload it with (generator.weight_sync="
                f"{self.weight_sync}: only object_store keeps one); the learner "
                f"group restarts from its checkpoint and republishes") from error
        self._loaded(i, gen.load_weights.remote(version, self.kept[1]), version,
                     time.monotonic() + self.sync_timeout_s)
