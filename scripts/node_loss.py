"""Node loss on a multi-node Ray cluster on this one machine: a head and two worker nodes,
each its own raylet and object store (``ray.cluster_utils.Cluster``), a toy ReLIFT run
placed over them by the job's own placement, and one worker node killed mid-run with
everything on it (raylet, actors, learner workers, object store), as a spot preemption or a
crashed host does. A new node joins a little later, as the autoscaler would bring one.

    .venv/bin/python scripts/node_loss.py [--steps 12] [--at 5]

Two runs on the same cluster, same config: a reference run, then the run whose node is lost
once its checkpoint of step ``--at - 1`` is written (the node chosen is the one holding the
most of the run's actors). The check: the final scheduler state and weights of both runs are
equal, bit for bit. Exit status 0 when they are, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NODE = {"num_cpus": 4, "object_store_memory": 256 * 2**20}
OURS = ("HFGenerator", "RewardWorker", "SchedulerActor", "RayTrainWorker")


def end_state(summary):
    from safetensors.torch import load_file
    ckpt = Path(summary.checkpoint)
    return (json.loads((ckpt / "scheduler_state.json").read_text()),
            load_file(ckpt / "policy" / "model.safetensors"))


def placement() -> dict[str, Counter]:
    """{node id: Counter of the run's actor classes alive on it}."""
    # Ray's own view of the actors (GCS), without the dashboard's state API
    from ray._private.state import actors
    out: dict[str, Counter] = {}
    for a in actors().values():
        name = a.get("ActorClassName", "")
        if a.get("State") == "ALIVE" and any(k in name for k in OURS):
            out.setdefault(a["Address"]["NodeID"], Counter())[name.split(".")[-1]] += 1
    return out


def checkpointed(run_storage: Path, step: int) -> bool:
    for d in run_storage.glob("checkpoint_*"):
        meta = d / "meta.json"
        if meta.is_file() and json.loads(meta.read_text())["step"] == step:
            return True
    return False


def lose_a_node(cluster, workers: list, run_storage: Path, step: int, running) -> list[str]:
    """Once the run has checkpointed ``step``: kill the worker node holding most of its
    actors (no graceful drain), then add a fresh node 20 s later (from the main thread: Ray
    starts a node's processes there)."""
    while not checkpointed(run_storage, step):
        if not running.is_alive():
            return []
        time.sleep(0.5)
    where = placement()
    print(f"[node-loss] actors by node: {where}", flush=True)
    victim = max(workers, key=lambda n: sum(where.get(n.node_id, Counter()).values()))
    held = dict(where.get(victim.node_id, Counter()))
    log = [f"node {victim.node_id[:8]} lost after the checkpoint of step {step}, holding "
           f"{held}"]
    print(f"[node-loss] {log[-1]}", flush=True)
    cluster.remove_node(victim, allow_graceful=False)
    time.sleep(20)
    cluster.add_node(**NODE)
    log.append("a new node joined")
    print(f"[node-loss] {log[-1]}", flush=True)
    return log


def start_cluster():
    """A head (2 CPUs) and two worker nodes (4 CPUs each), joined: (cluster, worker nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    from relift_ray.runtime.cluster import new_token, use_token
    use_token(new_token())  # token auth, as a job's own cluster has it: every node reads it
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "num_cpus": 2, "include_dashboard": False})
    workers = [cluster.add_node(**NODE) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster, workers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--at", type=int, default=5, help="the node is lost during this step")
    p.add_argument("--out", default="", help="output folder (default: a temporary one)")
    args = p.parse_args(argv)

    import ray
    import torch

    from relift_ray.config import load_config
    from relift_ray.jobs.train import run

    out = Path(args.out or tempfile.mkdtemp(prefix="relift-node-loss-")).resolve()
    every = 2
    common = [f"output_dir={out}", "algo.batch_size=8", "algo.n_samples=4", "algo.buffer_size=4",
              f"train.steps={args.steps}", f"train.checkpoint_every={every}",
              "cluster.num_learners=2", "cluster.num_reward_workers=2",
              "data.max_test_questions=40", "train.max_failures=3",
              "cluster.generate_deadline_s=30", "cluster.score_deadline_s=30",
              "cluster.batch_deadline_s=90", "cluster.validate_deadline_s=90"]
    cluster, workers = start_cluster()
    print(f"[node-loss] {len(ray.nodes())} nodes; output in {out}", flush=True)
    try:
        t0 = time.time()
        ref = run(load_config("toy_relift", common + ["name=reference"]))
        t_ref = time.time() - t0
        cfg = load_config("toy_relift", common + ["name=lost"])
        at = (args.at - 1) // every * every
        box: dict = {}
        running = threading.Thread(target=lambda: box.update(summary=run(cfg)), daemon=True)
        t0 = time.time()
        running.start()
        log = lose_a_node(cluster, workers, Path(cfg.storage_path) / cfg.name, at, running)
        running.join()
        t_lost = time.time() - t0
        if "summary" not in box:
            print("[node-loss] FAIL: the run with a lost node did not finish")
            return 1
        lost = box["summary"]
    finally:
        ray.shutdown()
        cluster.shutdown()
    (state_a, w_a), (state_b, w_b) = end_state(ref), end_state(lost)
    problems = []
    if not log:
        problems.append("no node was lost")
    if state_a != state_b:
        problems.append(f"scheduler state differs in "
                        f"{[k for k in state_a if state_a[k] != state_b.get(k)]}")
    if w_a.keys() != w_b.keys() or not all(torch.equal(w_a[k], w_b[k]) for k in w_a):
        problems.append("final weights differ")
    print(f"[node-loss] reference run {t_ref:.0f}s; run with a lost node {t_lost:.0f}s")
    if problems:
        print("[node-loss] FAIL: " + "; ".join(problems))
        return 1
    print(f"[node-loss] PASS: same scheduler state (step {state_b['counters']['step']}) and "
          f"bit-equal weights after losing a node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
