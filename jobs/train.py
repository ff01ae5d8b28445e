"""Train with ReLIFT (or RL / SFT) on Ray: the entry point for `ray job submit`.

    python jobs/train.py                                        # ReLIFT on the embedded default
    python jobs/train.py --config toy_rl train.steps=10    # a config shipped in relift_ray/configs
    ray job submit --address http://127.0.0.1:8265 -- python jobs/train.py output_dir=$PWD/runs
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from relift_ray.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
