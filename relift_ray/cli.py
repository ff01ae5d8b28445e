"""Command line: `relift train [--config FILE] [dotted.key=value ...]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "toy_relift.yaml"


def train_main(argv: list[str]) -> int:
    from relift_ray.config import ConfigError, load_config
    from relift_ray.data import DataError

    p = argparse.ArgumentParser(prog="relift train", description="Train with ReLIFT on Ray.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None,
                   help="YAML config (default: jobs/configs/toy_relift.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        from relift_ray.driver import run
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("train",):
        print("usage: relift train [--config FILE] [key=value ...]", file=sys.stderr)
        return 2
    return train_main(sys.argv[2:])
