"""``learner_step``: the one learner step, for the Ray Train loop (relift_ray.learner.loop)
and the in-process runner (relift_ray.jobs.in_process) alike."""
from __future__ import annotations

import time

from relift_ray.core.questions import BUCKETS
from relift_ray.learner.learner import Learner
from relift_ray.rollout.calls import call, tell


def learner_step(learner: Learner, scheduler, publisher, step: int, rank: int = 0,
                 world: int = 1) -> dict:
    """The one learner step, for the Ray Train loop and the in-process runner alike:

    1. this rank's shard of step ``step``'s batch from the scheduler (the first rank to ask
       makes it: questions, rollouts with weight version step-1, rewards, records, buffer);
    2. the RL update, and the SFT update when the hard buffer filled;
    3. weights version ``step`` to every generator (``publisher``).

    ``scheduler`` is the scheduler actor or a plain ``Scheduler``. Returns the step's metrics:
    the scheduler's figures, the learner's, and the seconds of each part."""
    t0 = time.perf_counter()
    batch = call(scheduler, "next_batch", step, rank, world)
    publisher.after_generation()
    t1, wall1 = time.perf_counter(), time.time()
    metrics = dict(batch.metrics)
    metrics.update(learner.train_step(batch))
    metrics["batch_wait_seconds"] = t1 - t0  # generation, reward, records and the transfer
    metrics["train_seconds"] = time.perf_counter() - t1
    wall2 = time.time()
    metrics["weight_sync_seconds"] = publisher.publish(learner, step)
    metrics["publish_wait_seconds"] = publisher.waited  # asynchronous: the batch sampled ahead
    metrics["staleness"] = step - 1 - batch.weight_version  # versions behind the learner
    metrics["sft_this_step"] = int(bool(batch.sft))
    if rank == 0:  # the timeline figure (relift_ray.tracking.timeline)
        lane = f"learners ({world})"
        tell(scheduler, "note_events", [
            {"what": "train", "lane": lane, "step": step, "start": wall1, "end": wall2},
            {"what": "sync", "lane": lane, "step": step, "start": wall2 + publisher.waited,
             "end": time.time()}])
    return metrics


def progress_line(step: int, total: int, m: dict) -> str:
    b = "/".join(str(m.get(f"bucket_{k}", "-")) for k in BUCKETS)
    return (f"[step {step}/{total}] reward {m.get('reward_mean', float('nan')):.3f} | "
            f"buckets E/M/H/X {b} | buffer {m.get('buffer_size', 0)} | "
            f"sft steps {m.get('sft_steps', 0)} | demos {m.get('demos_used_unique', 0)} | "
            f"{m['step_seconds']:.2f}s")
