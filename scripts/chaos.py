"""Chaos run: kill random actors at random steps of a longer toy ReLIFT run, and check that the
run ends exactly where an uninterrupted run ends.

    RAY_AUTH_MODE=disabled .venv/bin/python scripts/chaos.py [--steps 24] [--kills 4] [--seed 0]

Two runs on one local Ray cluster, same config: a reference run, then a run with
``train.kill`` set to ``--kills`` random (actor, step) pairs, actor among generator, reward,
scheduler and learner; each is a SIGKILL of that actor's process (relift_ray.faults). The check:
the final scheduler state (question table, buffer, samplers, counters) and the final weights of
both runs are equal, bit for bit. Exit status 0 when they are, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def end_state(summary: dict):
    from safetensors.torch import load_file
    ckpt = Path(summary.checkpoint)
    return (json.loads((ckpt / "scheduler_state.json").read_text()),
            load_file(ckpt / "policy" / "model.safetensors"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="output folder (default: a temporary one)")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    from relift_ray.faults import KINDS
    from relift_ray.config import load_config
    from relift_ray.runtime.cluster import init_ray
    from relift_ray.jobs.train import run

    rng = random.Random(args.seed)
    steps = rng.sample(range(2, args.steps + 1), min(args.kills, args.steps - 1))
    kills = sorted((rng.choice(KINDS), s) for s in steps)
    out = Path(args.out or tempfile.mkdtemp(prefix="relift-chaos-")).resolve()
    common = [f"output_dir={out}", "algo.batch_size=8", "algo.n_samples=4", "algo.buffer_size=4",
              f"train.steps={args.steps}", "train.checkpoint_every=3",
              "data.max_test_questions=60"]
    cfg_ref = load_config("toy_relift", common + ["name=reference"])
    kill_list = ",".join(f"{k}@{s}" for k, s in kills)
    restarts = sum(k in ("scheduler", "learner") for k, _ in kills)
    cfg_chaos = load_config("toy_relift", common + [
        "name=chaos", f"train.kill=[{kill_list}]", f"train.max_failures={restarts + 1}"])
    print(f"[chaos] {args.steps} steps; kills: {kill_list}; output in {out}", flush=True)

    init_ray(cfg_ref)
    t0 = time.time()
    ref = run(cfg_ref)
    t_ref = time.time() - t0
    t0 = time.time()
    chaos = run(cfg_chaos)
    t_chaos = time.time() - t0

    (state_a, w_a), (state_b, w_b) = end_state(ref), end_state(chaos)
    fired = sorted(p.name for p in out.glob("chaos.killed-*"))
    problems = []
    if len(fired) != len(kills):
        problems.append(f"{len(fired)} of {len(kills)} kills happened: {fired}")
    if state_a != state_b:
        keys = [k for k in state_a if state_a[k] != state_b.get(k)]
        problems.append(f"scheduler state differs in {keys}")
    if w_a.keys() != w_b.keys() or not all(torch.equal(w_a[k], w_b[k]) for k in w_a):
        problems.append("final weights differ")
    print(f"[chaos] reference run {t_ref:.0f}s; chaos run {t_chaos:.0f}s with {len(fired)} "
          f"kills ({', '.join(fired)})")
    if problems:
        print("[chaos] FAIL: " + "; ".join(problems))
        return 1
    print(f"[chaos] PASS: same scheduler state (step {state_b['counters']['step']}, "
          f"{len(state_b['records'])} question records, buffer {len(state_b['buffer'])}) and "
          f"bit-equal weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
