"""Command line: `relift train|compare|evaluate [--config FILE] [dotted.key=value ...]`,
`relift serve ...` (relift_ray.serve) and `relift data fetch ...` (relift_ray.fetch)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"
DEFAULTS = {"train": CONFIGS / "toy_relift.yaml", "compare": CONFIGS / "compare_toy.yaml",
            "evaluate": CONFIGS / "eval.yaml"}
WHAT = {"train": "Train with ReLIFT (or rl / sft / ... by algo.mode) on Ray.",
        "compare": "RL vs SFT vs SFT-then-RL vs ReLIFT and the paper's ablations, side by side.",
        "evaluate": "A model or checkpoint (eval.model=...) on the paper's math benchmarks: "
                    "avg@k at temperature 0.6."}


def command_main(command: str, argv: list[str]) -> int:
    from relift_ray.config import ConfigError, load_config
    from relift_ray.data import DataError

    default = DEFAULTS[command]
    p = argparse.ArgumentParser(prog=f"relift {command}", description=WHAT[command])
    p.add_argument("--config", default=str(default) if default.exists() else None,
                   help=f"YAML config (default: jobs/configs/{default.name})")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from relift_ray.imports import skip_unused_modules
        skip_unused_modules()  # a job's own process: nothing here uses scikit-learn
        if command == "train":
            from relift_ray.driver import run
        elif command == "evaluate":
            from relift_ray.eval_job import run
        else:
            from relift_ray.compare import run
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str]) -> int:
    return command_main("train", argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from relift_ray.serve import serve_main
        return serve_main(argv[1:])
    if argv and argv[0] == "data":
        from relift_ray.fetch import data_main
        return data_main(argv[1:])
    if not argv or argv[0] not in DEFAULTS:
        print("usage: relift {train,compare,evaluate} [--config FILE] [key=value ...]\n"
              "       relift serve --model PATH [--backend transformers|vllm] [--port 8000]\n"
              "       relift data fetch [--benchmarks a,b] [--to DIR]",
              file=sys.stderr)
        return 2
    return command_main(argv[0], argv[1:])
