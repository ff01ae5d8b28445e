"""Every actor comes back: a generator, a reward worker, the scheduler or a learner worker
killed with SIGKILL mid-run (``train.kill``), and the job finishes by itself with exactly the
scheduler state (question table, buffer, counters) and the weights of an uninterrupted run,
which is what a run restarted by hand from the same checkpoint gives (tests/test_e2e.py).

- generator: Ray restarts it; the scheduler reloads the step's weights and samples again;
- reward worker: Ray restarts it and re-runs the scoring call;
- a reward worker's scoring process: the worker notices, starts another and scores again;
- scheduler / learner: the learner group restarts from its last checkpoint, which puts the
  scheduler (restarted by Ray, empty) back to that checkpoint's state.

The same for an actor stopped with SIGSTOP (killed when a call on it passes its deadline), a
newest checkpoint left incomplete (skipped for the one before), and faults spread over a run
(the failure budget starts again after a checkpoint). A lost node: tests/test_node_loss.py.
"""
import json
import re
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
                                       ("learner", 3), ("scorer", 3)])
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
    if kind == "scorer":  # the reward worker noticed its scoring process die, and restarted it
        assert s.reward_deaths == 1


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


# ------------------------------------------------------------ hung actors (SIGSTOP)
DEADLINES = ("cluster.generate_deadline_s=20", "cluster.score_deadline_s=20",
             "cluster.batch_deadline_s=60", "cluster.validate_deadline_s=60",
             "generator.sync_timeout_s=20")


def run_within(cfg, seconds: float):
    """``run(cfg)`` in a thread, failing the test if it has not ended after ``seconds``
    (a stopped actor that no deadline ends hangs the run forever)."""
    import threading

    from relift_ray.jobs.train import run
    box = {}

    def target():
        try:
            box["summary"] = run(cfg)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the run hung: still running after {seconds:g} s"
    if "error" in box:
        raise box["error"]
    return box["summary"]


@pytest.mark.parametrize("kind,step", [("generator", 4), ("scheduler", 5), ("reward", 3)])
def test_stopped_actor_meets_its_deadline_and_the_run_ends_as_if_nothing_happened(
        reference, kind, step, capsys):
    """An actor stopped with SIGSTOP (alive to the OS and to Ray, answering nothing) is
    killed when the call waiting on it runs past its deadline, Ray restarts it, and the run
    ends with the uninterrupted run's state and weights."""
    out, ref_summary, (ref_state, ref_weights) = reference
    name = f"stop-{kind}"
    s = run_within(cfg_for(out, name, f"train.kill=[{kind}@{step}:stop]",
                           "train.max_failures=2", *DEADLINES), 900)
    assert (out / f"{name}.stopped-{kind}-{step}").exists()  # it really was stopped
    who = {"generator": f"generator 0: generate at step {step}",
           "reward": f"reward worker 0: score at step {step}",
           "scheduler": f"scheduler: next_batch at step {step}"}[kind]
    assert re.search(rf"\[deadline\] {who} still running after", capsys.readouterr().out)
    state, weights = end_state(s)
    assert state == ref_state
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    assert s.after == ref_summary.after


# ------------------------------------------------------------ checkpoints and the failure budget
def test_a_corrupt_newest_checkpoint_is_skipped_for_the_one_before(reference, capsys):
    """The newest checkpoint (step 4) truncated as a crash or a full disk leaves it, then a
    learner killed: the restarted group skips it for step 2's and ends like the reference."""
    from relift_ray.jobs.train import run
    out, ref_summary, (ref_state, ref_weights) = reference
    s = run(cfg_for(out, "corrupt", "train.kill=[checkpoint@5,learner@5]",
                    "train.max_failures=2"))
    printed = capsys.readouterr().out
    assert re.search(r"checkpoint \S+ is skipped: \S+ \(rank \d\) has \d+ bytes", printed)
    assert "resumed from the checkpoint of step 2" in printed
    state, weights = end_state(s)
    assert state == ref_state
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_the_failure_budget_starts_again_after_a_checkpoint(reference, capsys):
    """train.max_failures=1 and two learner deaths, at steps 3 and 5, with the checkpoint of
    step 4 between them: the run goes on (a budget for the whole run would have ended it)."""
    from relift_ray.jobs.train import run
    out, ref_summary, (ref_state, ref_weights) = reference
    s = run(cfg_for(out, "budget", "train.kill=[learner@3,learner@5]", "train.max_failures=1"))
    # step 4's checkpoint, or step 2's when the kill at step 5 came before step 4's upload
    printed = capsys.readouterr().out
    assert re.search(r"failed 2 times \(train.max_failures=1; last: \w+\); it checkpointed "
                     r"step [24] since its failure budget began at step 0", printed), \
        [line for line in printed.splitlines() if "[train]" in line or "[learner]" in line]
    state, weights = end_state(s)
    assert state == ref_state
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
