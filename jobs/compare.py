"""RL vs SFT vs SFT-then-RL vs ReLIFT (and the paper's ablations) from one base model, with the
same number of learner steps and the same seeds: the entry point for `ray job submit`.

    python jobs/compare.py                                   # the embedded default, 3 seeds
    python jobs/compare.py compare.methods=rl,sft,relift compare.seeds=1
    ray job submit --address http://127.0.0.1:8265 -- python jobs/compare.py output_dir=$PWD/runs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from relift_ray.cli import command_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(command_main("compare", sys.argv[1:]))
