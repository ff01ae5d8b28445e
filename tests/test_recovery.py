"""Every actor comes back: a generator, a reward worker, the scheduler or a learner worker
killed with SIGKILL mid-run (``train.kill``), and the job finishes by itself with exactly the
scheduler state (question table, buffer, counters) and the weights of an uninterrupted run,
which is what a run restarted by hand from the same checkpoint gives (tests/test_e2e.py).

- generator: Ray restarts it; the scheduler reloads the step's weights and samples again;
- reward worker: Ray restarts it and re-runs the scoring call;
- scheduler / learner: the learner group restarts from its last checkpoint, which puts the
  scheduler (restarted by Ray, empty) back to that checkpoint's state.
"""
import json
from pathlib import Path

import pytest
import torch

from relift_ray.config import load_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cfg_for(out, name, *extra):
    return load_config("toy_relift", [
        f"output_dir={out}", f"name={name}", "algo.batch_size=8", "algo.n_samples=4",
        "algo.buffer_size=4", "train.steps=6", "train.checkpoint_every=2",
        "cluster.num_learners=2", "cluster.num_reward_workers=1", "data.max_test_questions=40",
        *extra])


def end_state(summary):
    ckpt = Path(summary.checkpoint)
    from safetensors.torch import load_file
    return (json.loads((ckpt / "scheduler_state.json").read_text()),
            load_file(ckpt / "policy" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    from relift_ray.jobs.train import run
    out = tmp_path_factory.mktemp("recovery")
    s = run(cfg_for(out, "reference"))
    return out, s, end_state(s)


@pytest.mark.parametrize("kind,step", [("generator", 4), ("reward", 3), ("scheduler", 5),
                                       ("learner", 3)])
def test_killed_actor_comes_back_and_the_run_ends_as_if_nothing_happened(reference, kind,
                                                                          step):
    from relift_ray.jobs.train import run
    out, ref_summary, (ref_state, ref_weights) = reference
    name = f"kill-{kind}"
    s = run(cfg_for(out, name, f"train.kill=[{kind}@{step}]", "train.max_failures=2"))
    assert (out / f"{name}.killed-{kind}-{step}").exists()  # it really was killed
    state, weights = end_state(s)
    assert state["counters"]["step"] == 6
    assert state == ref_state  # question table, buffer, samplers, counters
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert s.after == ref_summary.after


# ------------------------------------------------------------ asynchronous rollouts
def comparable(state):
    """The scheduler state without the figures of the batches made ahead (timings among them)."""
    return {**state, "ready": [{**b, "stats": {}} for b in state.get("ready", [])]}


@pytest.fixture(scope="module")
def async_reference(ray_local, tmp_path_factory):
    from relift_ray.jobs.train import run
    out = tmp_path_factory.mktemp("recovery-async")
    s = run(cfg_for(out, "reference", "algo.max_staleness=1"))
    return out, s, end_state(s)


@pytest.mark.parametrize("kind,step", [("learner", 3), ("scheduler", 5), ("generator", 4)])
def test_async_run_resumes_with_rollouts_in_flight(async_reference, kind, step):
    """With algo.max_staleness=1 a checkpoint holds the batch sampled ahead (from weights the
    resumed run no longer has); a run killed mid-way ends exactly like the uninterrupted one."""
    from relift_ray.jobs.train import run
    out, ref_summary, (ref_state, ref_weights) = async_reference
    name = f"async-kill-{kind}"
    s = run(cfg_for(out, name, "algo.max_staleness=1", f"train.kill=[{kind}@{step}]",
                    "train.max_failures=2"))
    assert (out / f"{name}.killed-{kind}-{step}").exists()
    state, weights = end_state(s)
    assert comparable(state) == comparable(ref_state)
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert s.after == ref_summary.after
