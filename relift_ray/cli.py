"""Command line: `relift train|compare|evaluate [--config FILE|NAME] [dotted.key=value ...]`,
`relift serve ...` (relift_ray.jobs.serve), `relift data fetch ...` (relift_ray.data.fetch) and
`relift token` (the Ray token file that `ray start` and `ray job submit` read, mode 0600).
``--config`` takes a YAML file or the name of a config shipped in relift_ray/configs; each
command's default is a shipped one, so an installed wheel runs the toy job as it is."""
from __future__ import annotations

import argparse
import sys

from relift_ray.config import load_config
from relift_ray.errors import ConfigError, DataError
from relift_ray.imports import skip_unused_modules

DEFAULTS = {"train": "toy_relift", "compare": "compare_toy", "evaluate": "eval"}
WHAT = {"train": "Train with ReLIFT (or rl / sft / ... by algo.mode) on Ray.",
        "compare": "RL vs SFT vs SFT-then-RL vs ReLIFT and the paper's ablations, side by side.",
        "evaluate": "A model or checkpoint (eval.model=...) on the paper's math benchmarks: "
                    "avg@k at temperature 0.6."}


def command_main(command: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"relift {command}", description=WHAT[command])
    p.add_argument("--config", default=DEFAULTS[command],
                   help=f"YAML file, or a shipped config's name (default: {DEFAULTS[command]})")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        skip_unused_modules()  # a job's own process: nothing here uses scikit-learn
        # each command imports its own job only (they bring Ray, torch, transformers)
        if command == "train":
            from relift_ray.jobs.train import run  # see above
        elif command == "evaluate":
            from relift_ray.jobs.evaluate import run  # see above
        else:
            from relift_ray.jobs.compare import run  # see above
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str]) -> int:
    return command_main("train", argv)


def token_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="relift token", description=(
        "Make the Ray token file if it is missing (a random token) and its mode 0600; print "
        "its path. With RAY_AUTH_MODE=token, `ray start` and `ray job submit` read it."))
    p.add_argument("--path", default="", help="the file (default: ~/.ray/auth_token)")
    args = p.parse_args(argv)
    from relift_ray.runtime.cluster import user_token  # imports Ray (no cluster started)
    print(user_token(args.path or None))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        from relift_ray.jobs.serve import serve_main  # Ray Serve and FastAPI
        return serve_main(argv[1:])
    if argv and argv[0] == "data":
        from relift_ray.jobs.data_fetch import data_main  # no Ray for the data command
        return data_main(argv[1:])
    if argv and argv[0] == "token":
        return token_main(argv[1:])
    if not argv or argv[0] not in DEFAULTS:
        print("usage: relift {train,compare,evaluate} [--config FILE|NAME] [key=value ...]\n"
              "       relift serve --model PATH [--backend transformers|vllm] [--port 8000]\n"
              "       relift data fetch [--benchmarks a,b] [--to DIR]\n"
              "       relift token [--path FILE]",
              file=sys.stderr)
        return 2
    return command_main(argv[0], argv[1:])
