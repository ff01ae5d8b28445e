"""Asynchronous rollouts (``algo.max_staleness`` = lag > 0): a producer thread makes the
batches ahead of the learners, batch s sampled with weight version max(0, s - 1 - lag).

``AheadProducer`` is the part of the scheduler that runs and waits for that thread; the
scheduler (relift_ray.scheduler.scheduler) makes each batch with its ``produce``. The lag is
fixed, so an asynchronous run is as deterministic (and resumable) as an on-policy one: the
learners publish weight version v only once the last batch to be sampled with v - 1 is.
"""
from __future__ import annotations

import threading
import time

from relift_ray.records import TrainBatch


class AheadProducer:
    """The producer thread's state and waits, mixed into ``Scheduler``. Its state is guarded
    by ``_cv``, taken after the scheduler's ``_lock`` and never before it."""

    def _init_ahead(self, lag: int) -> None:
        self.lag = lag
        self._cv = threading.Condition()
        self._ready: dict[int, TrainBatch] = {}  # made, not yet consumed by every learner
        self._next = 1  # the next batch the producer makes
        self._generated = 0  # the last batch whose rollouts are sampled
        self._published = -1  # the weight version the generators hold (-1: not known yet)
        self._epoch = 0  # bumped by a restore: a batch made before it is dropped
        self._error: BaseException | None = None
        self._producer: threading.Thread | None = None
        self._closed = False

    def _restore_ahead(self, step: int, ready: list[dict]) -> None:
        """Back to the state saved after step ``step`` (with the batches made ahead then)."""
        with self._cv:
            self._ready = {b.step: b for b in map(TrainBatch.from_dict, ready)}
            self._next, self._generated = step + 1, step
            self._published, self._error = -1, None  # the learners publish first
            self._cv.notify_all()

    def _next_batch_async(self, step: int) -> TrainBatch:
        self._start_producer()
        with self._cv:
            while step not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"making batch {step} failed: {self._error!r}") \
                        from self._error
                if step > self._next or (step < self._next and step not in self._ready):
                    raise RuntimeError(
                        f"learner asked for step {step}, scheduler makes batch {self._next} "
                        f"next (state out of sync with the learner's checkpoint)")
                self._cv.wait(1.0)
            for old in [s for s in self._ready if s < step]:  # every learner is past them
                del self._ready[old]
            return self._ready[step]

    def _start_producer(self) -> None:
        with self._cv:
            if self._producer is None or not self._producer.is_alive():
                self._error = None
                self._producer = threading.Thread(target=self._produce_ahead,
                                                  name="relift-producer", daemon=True)
                self._producer.start()

    def _produce_ahead(self) -> None:
        """Batch after batch, each as soon as the generators hold its weight version: while
        the learners train step s, batches up to s + lag are sampled (with version s - 1 for
        the last). Stops at train.steps or on an error, which the learners then raise."""
        while True:
            with self._cv:
                step, epoch = self._next, self._epoch
                if step > self.steps or self._closed:
                    return
                need = self.behavior_version(step)
                if self._published < need:
                    self._cv.wait(1.0)
                    continue
            try:
                with self._lock:
                    if epoch != self._epoch:
                        continue
                    batch = self.produce(step)
            except BaseException as e:  # the learners' next_batch raises it
                with self._cv:
                    self._error = e
                    self._cv.notify_all()
                return
            with self._cv:
                if epoch == self._epoch:  # not made stale by load_state_dict meanwhile
                    self._ready[step] = batch
                    self._next = step + 1
                    self._cv.notify_all()

    def wait_made(self, step: int) -> None:
        """Returns once batch ``step`` is made (or there is nothing more to make): the
        generators and reward workers are idle until the next weight version (the in-process
        runner evaluates on them then)."""
        with self._cv:
            while self.lag and self._next <= min(step, self.steps):
                if self._error is not None or self._closed:
                    return
                self._cv.wait(1.0)

    def close(self) -> None:
        """Stops the producer thread (it makes no further batch)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _mark_generated(self, step: int) -> None:
        with self._cv:
            self._generated = max(self._generated, step)
            self._cv.notify_all()

    def wait_generated(self, step: int, timeout: float = 3600.0) -> None:
        """Returns once batch ``step``'s rollouts are sampled: the learners publish weight
        version v only after the last batch to be sampled with v - 1 (v + lag) has been, so a
        batch is never sampled with other weights than its own version (determinism)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._generated < min(step, self.steps):
                if self._error is not None:
                    raise RuntimeError(f"making batch {self._next} failed: {self._error!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"batch {step} not sampled after {timeout:g} s")
                self._cv.wait(1.0)

    def weights_published(self, version: int) -> None:
        """The generators hold weight version ``version`` now (the learners' publisher)."""
        with self._cv:
            self._published = version
            self._cv.notify_all()
