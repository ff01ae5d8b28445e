"""``learner_step``: the one learner step, for the Ray Train loop (relift_ray.learner.loop)
and the in-process runner (relift_ray.jobs.in_process) alike."""
from __future__ import annotations

import time

from relift_ray.learner.learner import Learner
from relift_ray.records import StepMetrics
from relift_ray.rollout.calls import call_within, tell


def learner_step(learner: Learner, scheduler, publisher, step: int, rank: int = 0,
                 world: int = 1, within: float | None = None) -> StepMetrics:
    """The one learner step, for the Ray Train loop and the in-process runner alike:

    1. this rank's shard of step ``step``'s batch from the scheduler (the first rank to ask
       makes it: questions, rollouts with weight version step-1, rewards, records, buffer);
    2. the RL update, and the SFT update when the hard buffer filled;
    3. weights version ``step`` to every generator (``publisher``).

    ``scheduler`` is the scheduler actor or a plain ``Scheduler``; an actor that has not
    handed the batch over within ``within`` seconds (cluster.batch_deadline_s) is killed as
    dead (relift_ray.rollout.calls). Returns the step's figures: the scheduler's, the
    learner's, and the seconds of each part."""
    t0 = time.perf_counter()
    batch = call_within(within, "scheduler", scheduler, "next_batch", step, rank, world,
                        step=step)
    publisher.after_generation()
    t1, wall1 = time.perf_counter(), time.time()
    update = learner.train_step(batch)
    t2, wall2 = time.perf_counter(), time.time()
    sync = publisher.publish(learner, step)
    if rank == 0:  # the timeline figure (relift_ray.tracking.timeline)
        lane = f"learners ({world})"
        tell(scheduler, "note_events", [
            {"what": "train", "lane": lane, "step": step, "start": wall1, "end": wall2},
            {"what": "sync", "lane": lane, "step": step, "start": wall2 + publisher.waited,
             "end": time.time()}])
    return StepMetrics(step=step, batch=batch.stats, update=update,
                       batch_wait_seconds=t1 - t0,  # generation, reward, records, transfer
                       train_seconds=t2 - t1, weight_sync_seconds=sync,
                       publish_wait_seconds=publisher.waited,  # the batch sampled ahead
                       staleness=step - 1 - batch.weight_version,  # versions behind
                       sft_this_step=int(bool(batch.sft)),
                       weight_sync_bytes=publisher.sent_bytes or None)


def progress_line(total: int, m: StepMetrics) -> str:
    s = m.batch
    b = "/".join("-" if n is None else str(n) for n in (s.bucket_easy, s.bucket_medium,
                                                        s.bucket_hard, s.bucket_hardest))
    reward = float("nan") if s.reward_mean is None else s.reward_mean
    return (f"[step {m.step}/{total}] reward {reward:.3f} | buckets E/M/H/X {b} | buffer "
            f"{s.buffer_size} | sft steps {s.sft_steps} | demos {s.demos_used_unique} | "
            f"{m.step_seconds:.2f}s")
