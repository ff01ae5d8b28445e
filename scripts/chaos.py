"""Chaos run: every kind of fault at random steps of a longer toy ReLIFT run, and a check
that the run ends exactly where an uninterrupted run ends.

    .venv/bin/python scripts/chaos.py [--steps 60] [--extra 0] [--seed 0]
        [--nodes]

Two runs on one local Ray cluster, same config: a reference run, then a run with
``train.kill`` holding one fault of each kind at its own random step (``--extra`` more of
random kinds): a SIGKILL of a generator, a reward worker, its scoring process, the scheduler
or a learner worker; a SIGSTOP of a generator, a reward worker or the scheduler (ended by
the calls' deadlines, set short here); and the newest checkpoint truncated, then a learner
killed (the resume skips it). Faults in relift_ray.faults. With ``--nodes`` the runs go on
a cluster of three nodes on this machine (scripts/node_loss.py) and one more fault is the
loss of the worker node holding most of the run's actors, a new node joining 20 s later.
The check: the final scheduler state (question table, buffer, samplers, counters) and the
final weights of both runs are equal, bit for bit (timings aside). It prints "faults
survived k of n" and exits 0 when all were.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
import node_loss  # noqa: E402 - scripts/, beside this one


def comparable(state: dict) -> dict:
    """The scheduler state without its timings (a validation's seconds)."""
    val = {k: v if not isinstance(v, dict) else {f: x for f, x in v.items() if f != "seconds"}
           for k, v in state.get("validation", {}).items()}
    return {**state, "validation": val}


def end_state(summary: dict):
    from safetensors.torch import load_file
    ckpt = Path(summary.checkpoint)
    return (json.loads((ckpt / "scheduler_state.json").read_text()),
            load_file(ckpt / "policy" / "model.safetensors"))


# (faults in train.kill, label): one of each kind
FAULTS = [(["generator@{s}"], "generator SIGKILL"), (["reward@{s}"], "reward worker SIGKILL"),
          (["scorer@{s}"], "scoring process SIGKILL"), (["scheduler@{s}"], "scheduler SIGKILL"),
          (["learner@{s}"], "learner SIGKILL"), (["generator@{s}:stop"], "generator SIGSTOP"),
          (["reward@{s}:stop"], "reward worker SIGSTOP"),
          (["scheduler@{s}:stop"], "scheduler SIGSTOP"),
          (["checkpoint@{s}", "learner@{s}"], "corrupt newest checkpoint + learner SIGKILL")]
DEADLINES = ["cluster.generate_deadline_s=20", "cluster.score_deadline_s=20",
             "cluster.batch_deadline_s=60", "cluster.validate_deadline_s=60",
             "generator.sync_timeout_s=20"]
CHECKPOINT_EVERY = 3


NODE_LOSS = ([], "worker node lost")  # no train.kill entry: this script kills the node


def plan(rng: random.Random, steps: int, extra: int,
         nodes: bool = False) -> list[tuple[int, list[str], str]]:
    """(step, train.kill entries, label) for one fault of each kind plus ``extra`` random
    ones, each at its own step; a corrupt checkpoint needs one written before its step."""
    kinds = FAULTS + [rng.choice(FAULTS) for _ in range(extra)] + ([NODE_LOSS] if nodes else [])
    rng.shuffle(kinds)
    first = CHECKPOINT_EVERY + 1  # every fault after the first checkpoint
    chosen = sorted(rng.sample(range(first, steps + 1), len(kinds)))
    return [(s, [spec.format(s=s) for spec in specs], label)
            for s, (specs, label) in zip(chosen, kinds)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--extra", type=int, default=0, help="faults beyond one of each kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="output folder (default: a temporary one)")
    p.add_argument("--nodes", action="store_true",
                   help="three nodes on this machine, one of them lost mid-run")
    args = p.parse_args(argv)
    if args.steps < CHECKPOINT_EVERY + len(FAULTS) + args.extra + 1:
        p.error(f"--steps {args.steps}: too few for {len(FAULTS) + args.extra} faults")

    import torch

    from relift_ray.config import load_config
    from relift_ray.jobs.train import run
    from relift_ray.runtime.cluster import init_ray

    faults = plan(random.Random(args.seed), args.steps, args.extra, args.nodes)
    out = Path(args.out or tempfile.mkdtemp(prefix="relift-chaos-")).resolve()
    common = [f"output_dir={out}", "algo.batch_size=8", "algo.n_samples=4", "algo.buffer_size=4",
              f"train.steps={args.steps}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
              "data.max_test_questions=60"]
    cfg_ref = load_config("toy_relift", common + ["name=reference"])
    kill_list = ",".join(spec for _, specs, _ in faults for spec in specs)
    restarts = sum(any(k in ",".join(specs) for k in ("scheduler", "learner"))
                   for _, specs, _ in faults)
    cfg_chaos = load_config("toy_relift", common + DEADLINES + [
        "name=chaos", f"train.kill=[{kill_list}]", f"train.max_failures={restarts + 1}"])
    print(f"[chaos] {args.steps} steps, {len(faults)} faults; output in {out}", flush=True)
    for s, _, label in faults:
        print(f"[chaos]   step {s:>3}: {label}", flush=True)

    cluster = workers = None
    if args.nodes:
        cluster, workers = node_loss.start_cluster()
    else:
        init_ray(cfg_ref)
    t0 = time.time()
    ref = run(cfg_ref)
    t_ref = time.time() - t0
    box: dict = {}

    def chaos_run():
        try:
            box["summary"] = run(cfg_chaos)
        except Exception as e:  # noqa: BLE001 - reported below
            box["error"] = f"{type(e).__name__}: {e}"

    t0 = time.time()
    running = threading.Thread(target=chaos_run, daemon=True)
    running.start()
    lost = []
    for s, specs, label in faults:
        if (specs, label) == NODE_LOSS:  # Ray starts a node's processes from the main thread
            lost = node_loss.lose_a_node(cluster, workers, Path(cfg_chaos.storage_path) /
                                         "chaos", (s - 1) // CHECKPOINT_EVERY *
                                         CHECKPOINT_EVERY, running)
    running.join()
    t_chaos = time.time() - t0
    chaos, error = box.get("summary"), box.get("error", "")
    if cluster is not None:
        import ray
        ray.shutdown()
        cluster.shutdown()

    fired = {p.name.split(".", 1)[1] for p in out.glob("chaos.killed-*")} | \
        {p.name.split(".", 1)[1] for p in out.glob("chaos.stopped-*")}
    done = [(s, label) for s, specs, label in faults
            if (all(_marker(spec) in fired for spec in specs) if specs else bool(lost))]
    problems = [error] if error else []
    if chaos is not None:
        (state_a, w_a), (state_b, w_b) = end_state(ref), end_state(chaos)
        state_a, state_b = comparable(state_a), comparable(state_b)
        if state_a != state_b:
            keys = [k for k in state_a if state_a[k] != state_b.get(k)]
            problems.append(f"scheduler state differs in {keys}")
        if w_a.keys() != w_b.keys() or not all(torch.equal(w_a[k], w_b[k]) for k in w_a):
            problems.append("final weights differ")
    if len(done) != len(faults):
        problems.append(f"{len(done)} of {len(faults)} faults happened")
    # a run that ends wrong survived none for sure; one that ends right survived every fault
    survived = 0 if problems else len(done)
    print(f"[chaos] reference run {t_ref:.0f}s; chaos run {t_chaos:.0f}s")
    print(f"[chaos] faults survived {survived} of {len(faults)}")
    if problems:
        print("[chaos] FAIL: " + "; ".join(problems))
        return 1
    print(f"[chaos] PASS: same scheduler state (step {state_b['counters']['step']}, "
          f"{len(state_b['records'])} question records, buffer {len(state_b['buffer'])}) and "
          f"bit-equal weights")
    return 0


def _marker(spec: str) -> str:
    """The marker name a train.kill entry leaves (relift_ray.faults.due)."""
    kind, _, rest = spec.partition("@")
    step, _, action = rest.partition(":")
    return f"{'stopped' if action == 'stop' else 'killed'}-{kind}-{step}"


if __name__ == "__main__":
    sys.exit(main())
