"""The toy base model as a job: print its folder, or pretrain it from the recipe and ship it.

The toy task and its shipped weights are data (relift_ray.data.toy); building and checking
the model (greedy accuracy on the test split, with a generator and the reward) is this job.

    python -m relift_ray.jobs.toy_base                   # the base model's directory
    python -m relift_ray.jobs.toy_base --rebuild DIR     # pretrain into DIR/toy_base-<hash>
    python -m relift_ray.jobs.toy_base --rebuild DIR --ship   # ... and ship it
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch
import transformers

from relift_ray.core.scoring import math_reward
from relift_ray.core.stats import summarize
from relift_ray.data.toy import task
from relift_ray.data.toy.model import (
    EVAL_MAX_NEW_TOKENS,
    RECIPE,
    SHIPPED,
    base_model_path,
    build_base_model,
    recipe_hash,
)
from relift_ray.records import SamplingParams
from relift_ray.rollout.hf import HFGenerator


def level_accuracy(path: str | Path, levels=task.LEVELS) -> dict[str, float]:
    """Greedy accuracy of the model at ``path`` on the toy test split, in-process (no Ray):
    {"overall": acc, "level_1": acc, ...}."""
    questions = task.make_questions("test", levels)
    gen = HFGenerator(str(path))
    out = gen.generate(questions, SamplingParams(n=1, temperature=0.0,
                                                 max_new_tokens=EVAL_MAX_NEW_TOKENS))
    scores = {q.id: math_reward(group[0].text, q.answer)[0] for q, group in zip(questions, out)}
    return summarize(questions, scores)


def ship(build_dir: str | Path, log=print) -> str:
    """Copy a build made from the current RECIPE into the package (``SHIPPED``), with a
    recipe.json recording RECIPE, recipe_hash(), the versions it was built with and its greedy
    test accuracy (measured on this machine)."""
    build_dir = Path(build_dir)
    done = json.loads((build_dir / "DONE").read_text())
    if done != RECIPE:
        raise ValueError(f"{build_dir} was built from another recipe than the current RECIPE")
    acc = level_accuracy(build_dir)
    tmp = SHIPPED.with_name(SHIPPED.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in sorted(build_dir.iterdir()):
        if f.is_file() and f.name != "DONE":
            shutil.copyfile(f, tmp / f.name)  # plain 0644 files (safetensors writes 0600)
    meta = {"recipe_hash": recipe_hash(), "recipe": RECIPE,
            "built_with": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "machine": platform.machine(), "python": platform.python_version()},
            "greedy_test_accuracy": {k: round(v, 4) for k, v in acc.items()}}
    (tmp / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
    if SHIPPED.exists():
        shutil.rmtree(SHIPPED)
    tmp.rename(SHIPPED)
    log(f"[base model] shipped {build_dir} to {SHIPPED} (greedy test accuracy {acc})")
    return str(SHIPPED)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m relift_ray.jobs.toy_base", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", metavar="DIR",
                    help="pretrain from RECIPE into DIR/toy_base-<recipe hash> (even if there)")
    ap.add_argument("--ship", action="store_true",
                    help="with --rebuild: copy the rebuild into relift_ray/data/toy/base_model/")
    args = ap.parse_args(argv)

    def log(msg):  # stdout carries only the path
        print(msg, file=sys.stderr, flush=True)

    if args.ship and not args.rebuild:
        ap.error("--ship needs --rebuild DIR")
    if args.rebuild:
        path = build_base_model(args.rebuild, log=log, force=True)
        if args.ship:
            ship(path, log=log)
        print(path)
    else:
        print(base_model_path(log=log))


if __name__ == "__main__":
    main()
