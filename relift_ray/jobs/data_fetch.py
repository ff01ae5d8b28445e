"""``relift data fetch``: the command, and the fetch with its gold-answer check run by the reward
worker (math-verify in a child process, a time limit per answer: no gold answer upstream can
hang it). The sources, the download and the verification are relift_ray.data.fetch."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from relift_ray.data.benchmarks import default_fetch_dir
from relift_ray.data.fetch import SOURCES, fetch
from relift_ray.errors import DataError
from relift_ray.rollout.rewards import RewardWorker

GOLD_CHECK = "relift_ray.core.scoring:verified_reward"  # every answer through math-verify


@contextmanager
def gold_scorer(timeout_s: float = 5.0, fn: str = GOLD_CHECK):
    """The reward worker's ``score`` for the fetch's gold check, and its child process closed
    after."""
    worker = RewardWorker("boxed", timeout_s, fn=fn, memory_mb=2048, max_answer_chars=8192)
    try:
        yield worker.score
    finally:
        worker.close()


def fetch_checked(names: list[str] | None = None, to: str | Path = "", log=print,
                  refresh: bool = False, timeout_s: float = 5.0) -> dict:
    """``relift_ray.data.fetch.fetch`` with the gold check in the reward worker."""
    with gold_scorer(timeout_s) as score:
        return fetch(score, names, to, log, refresh)


def data_main(argv: list[str]) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="relift data", description=(
        "relift data fetch: download the evaluation benchmarks once into one local folder."))
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download, check and list the benchmarks")
    f.add_argument("--benchmarks", default="", help=f"comma-separated (default: all of "
                   f"{', '.join(SOURCES)})")
    f.add_argument("--to", default="", help=f"folder (default: {default_fetch_dir()})")
    f.add_argument("--refresh", action="store_true", help=(
        "read the sources with no commit pinned here at their head again (not the commit "
        "manifest.json recorded), and report what changed"))
    args = p.parse_args(argv)
    try:
        fetch_checked([b for b in args.benchmarks.split(",") if b] or None, args.to,
                      refresh=args.refresh)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
