"""Serving load on this machine: requests/s and latency of the transformers deployment.

Serves the toy base model (``relift serve``'s deployment on a local Ray cluster, one replica,
loopback only) and sends greedy completions of toy test questions (48 new tokens) from 1 and
8 concurrent clients, with request batching (``--batch-size 8``) and without (1). Each setting
sends a bounded number of requests; prints one line per setting and a table.

    python benchmarks/bench_serve.py                 # about two minutes on 2 cores
    python benchmarks/bench_serve.py --requests 96
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

from relift_ray.background import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def post(url: str, body: dict) -> float:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        json.loads(r.read())
    return time.perf_counter() - t0


def load(url: str, prompts: list[str], clients: int, requests: int, deadline_s: float) -> dict:
    """``requests`` completions from ``clients`` threads; latency per request, throughput."""
    lat: list[float] = []
    lock = threading.Lock()
    next_i = [0]
    stop_at = time.perf_counter() + deadline_s

    def client():
        while time.perf_counter() < stop_at:
            with lock:
                i = next_i[0]
                if i >= requests:
                    return
                next_i[0] += 1
            t = post(f"{url}/completions", {"prompt": prompts[i % len(prompts)],
                                            "max_tokens": 48, "temperature": 0})
            with lock:
                lat.append(t)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=48, help="requests per setting")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per setting at most")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the replica")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from relift_ray.data.toy.model import base_model_path
    from relift_ray.data.toy.task import make_questions
    from relift_ray.jobs.serve import build_app

    ray.init(address="local", num_cpus=4, include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    port = free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1"
    prompts = [q.prompt for q in make_questions("test")[:64]]
    rows = []
    for batch in (1, 8):
        serve.run(build_app(base_model_path(), "toy", threads=args.threads, num_cpus=1,
                            batch_size=batch), name="relift", route_prefix="/")
        post(f"{url}/completions", {"prompt": prompts[0], "max_tokens": 48, "temperature": 0})
        for clients in (1, 8):
            r = {"batch_size": batch, "clients": clients,
                 **load(url, prompts, clients, args.requests, args.deadline)}
            rows.append(r)
            print(json.dumps(r), flush=True)
    serve.shutdown()
    ray.shutdown()
    print(f"\n{'batch size':>10}{'clients':>9}{'requests':>10}{'req/s':>8}{'p50 ms':>9}"
          f"{'p99 ms':>9}")
    for r in rows:
        print(f"{r['batch_size']:>10}{r['clients']:>9}{r['requests']:>10}{r['rps']:>8.2f}"
              f"{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}")


if __name__ == "__main__":
    main()
