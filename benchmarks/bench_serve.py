"""Serving under load on this machine: `relift serve`'s transformers deployment (the toy
base model, one replica, loopback, an API key) and a bounded mix of clients through the
official ``openai`` client, for a fixed time:

- ``complete``: greedy completions (48 tokens at most);
- ``stream``: streamed completions, token by token;
- ``leave``: a long streamed generation (``ignore_eos``) whose client reads two chunks and
  disconnects: the replica must stop generating for it;
- ``over``: requests over a limit (max_tokens past the context, too many choices, a body over
  ``max_body_bytes``): 400 or 413;
- ``nokey``: requests without the API key: 401.

More clients than the replica's queue (``--max-queue``) get 429 with Retry-After. It prints
p50/p99 latency and tokens/s of the answered requests, the requests refused by status, those
lost (no answer and no error: goal 0), the generations still running a moment after the load
(their clients gone: goal 0) and the replica's RSS before and after.

    python benchmarks/bench_serve.py                     # 60 s, 12 clients, a queue of 4
    python benchmarks/bench_serve.py --quick             # a few seconds (the test's size)
    python benchmarks/bench_serve.py --batching          # req/s with and without batching

The toy model is served from a copy with a context of 1024 tokens, so that a generation can
run long enough for its client to leave it.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relift_ray.background import free_port  # noqa: E402

KEY = "sk-bench"
KINDS = ("complete", "stream", "complete", "leave", "over", "nokey")


def get(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def one(client, kind: str, i: int, prompt: str) -> tuple[str, int]:
    """The ``i``-th request of a client of ``kind``: (outcome, completion tokens, or text
    pieces of a stream). Outcomes: ok, left, the HTTP status of an error answer, stream-error
    (an error event in a stream), or lost."""
    import openai
    try:
        if kind == "complete":
            out = client.completions.create(model="toy", prompt=prompt, max_tokens=48,
                                            temperature=0)
            return ("ok" if out.choices else "lost"), out.usage.completion_tokens
        if kind == "stream":  # (the toy base has no chat template: completions)
            tokens, finish = 0, None
            for ch in client.completions.create(model="toy", prompt=prompt, max_tokens=48,
                                                temperature=0, stream=True):
                tokens += bool(ch.choices[0].text)
                finish = ch.choices[0].finish_reason or finish
            return ("ok" if finish else "lost"), tokens
        if kind == "leave":
            stream = client.completions.create(model="toy", prompt=prompt, max_tokens=900,
                                               temperature=0, stream=True,
                                               extra_body={"ignore_eos": True})
            for k, _ in enumerate(stream):
                if k == 1:
                    break
            stream.close()  # the client leaves mid-generation
            return "left", 0
        if kind == "over":
            over = [{"max_tokens": 1_000_000}, {"n": 64, "temperature": 1.0},
                    {"prompt": "1" * 70_000}][i % 3]
            client.completions.create(**{"model": "toy", "prompt": prompt, "max_tokens": 8,
                                         **over})
            return "lost", 0  # answered though over a limit: counted as a failure
        client.with_options(api_key="wrong").models.list()
        return "lost", 0
    except openai.APIStatusError as e:
        return str(e.status_code), 0
    except openai.APIError as e:  # an error event inside a stream (e.g. its deadline)
        return ("stream-error" if getattr(e, "body", None) is not None else "lost"), 0
    except Exception:  # no answer and no error: a connection dropped, a client timeout
        return "lost", 0


def load(url: str, prompts: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads, client i of kind KINDS[i % len(KINDS)], each sending requests
    one after another for ``seconds``; then the replica's state a moment later."""
    import openai
    stats_url = f"{url.rsplit('/v1', 1)[0]}/stats"
    before = get(stats_url)
    done: list = []  # (kind, outcome, seconds, tokens)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run(c: int):
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
        kind, k = KINDS[c % len(KINDS)], 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            outcome, tokens = one(client, kind, k, prompts[(c + k * clients) % len(prompts)])
            with lock:
                done.append((kind, outcome, time.perf_counter() - t0, tokens))
            k += 1
            if outcome == "429":
                time.sleep(0.2)  # as Retry-After asks, shorter: the load stays bounded
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    time.sleep(1.0)  # a moment for the generations of clients that left to stop
    after = get(stats_url)
    ok = sorted(s for _, o, s, _ in done if o == "ok")
    refused = collections.Counter(o for _, o, _, _ in done if o not in ("ok", "left", "lost"))
    return {
        "seconds": round(wall, 1), "clients": clients, "requests": len(done),
        "answered": len(ok), "left": sum(o == "left" for _, o, _, _ in done),
        "p50_ms": round(1000 * statistics.median(ok)) if ok else None,
        "p99_ms": round(1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))]) if ok else None,
        "tokens_per_s": round(sum(t for *_, t in done) / wall, 1),
        "refused": dict(sorted(refused.items())),
        "lost": sum(o == "lost" for _, o, _, _ in done),
        "still_running": after["running"],
        "cancelled": after["cancelled"] - before["cancelled"],
        "rss_mb_before": round(before["rss_mb"]), "rss_mb_after": round(after["rss_mb"])}


def long_context_toy(folder: str) -> str:
    """The toy base model with a context of 1024 tokens (its weights as they are)."""
    from relift_ray.data.toy.model import base_model_path
    shutil.copytree(base_model_path(), folder, dirs_exist_ok=True)
    cfg = Path(folder, "config.json")
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()),
                               "max_position_embeddings": 1024}))
    return folder


def batching(url_of, prompts: list[str], requests: int) -> None:
    """Requests/s and latency with batching off and on, 1 and 8 clients."""
    import openai
    rows = []
    for batch in (1, 8):
        url = url_of(batch)
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=300)
        for clients in (1, 8):
            lat, n = [], iter(range(requests))
            lock = threading.Lock()

            def run():
                while True:
                    with lock:
                        i = next(n, None)
                    if i is None:
                        return
                    t = time.perf_counter()
                    client.completions.create(model="toy", prompt=prompts[i % len(prompts)],
                                              max_tokens=48, temperature=0)
                    with lock:
                        lat.append(time.perf_counter() - t)
            t0 = time.perf_counter()
            threads = [threading.Thread(target=run) for _ in range(clients)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            lat.sort()
            rows.append((batch, clients, len(lat) / (time.perf_counter() - t0),
                         1000 * statistics.median(lat), 1000 * lat[int(0.99 * len(lat))]))
    print(f"{'batch size':>10}{'clients':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for b, c, rps, p50, p99 in rows:
        print(f"{b:>10}{c:>9}{rps:>8.2f}{p50:>9.0f}{p99:>9.0f}")


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    p.add_argument("--clients", type=int, default=12, help="concurrent clients")
    p.add_argument("--max-queue", type=int, default=4, help="the replica's queue")
    p.add_argument("--quick", action="store_true", help="8 s, 8 clients, a queue of 3")
    p.add_argument("--batching", action="store_true",
                   help="instead: req/s with batching off and on (48 requests per row)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the replica")
    p.add_argument("--json", default="", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.clients, args.max_queue = 8.0, 8, 3
    import ray
    from ray import serve

    from relift_ray.config import RunConfig
    from relift_ray.data.toy.task import make_questions
    from relift_ray.jobs.openai_api import ServeLimits
    from relift_ray.jobs.serve import build_app
    from relift_ray.runtime.cluster import init_ray

    cfg = RunConfig()
    cfg.cluster.address, cfg.cluster.num_cpus, cfg.cluster.dashboard = "local", 4, False
    init_ray(cfg)  # a local cluster of its own
    port = free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1"
    prompts = [q.prompt for q in make_questions("test")[:64]]
    limits = ServeLimits(max_queue=args.max_queue, max_body_bytes=64 * 1024, max_n=8)
    with tempfile.TemporaryDirectory() as tmp:
        model = long_context_toy(tmp)

        def deploy(batch: int) -> str:
            serve.run(build_app(model, "toy", threads=args.threads, num_cpus=1,
                                batch_size=batch, api_key=KEY, limits=limits),
                      name="relift", route_prefix="/")
            get(f"{url.rsplit('/v1', 1)[0]}/stats")  # up
            return url
        try:
            if args.batching:
                return batching(deploy, prompts, 48)
            deploy(8)
            r = load(url, prompts, args.clients, args.seconds)
        finally:
            serve.shutdown()
            ray.shutdown()
    print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
