"""Evaluate a model or checkpoint on the paper's math benchmarks (MATH-500, AIME24, AIME25, AMC,
Minerva, OlympiadBench, GSM8K): avg@k at temperature 0.6, scored by the reward pool. The entry
point for `ray job submit`.

    python jobs/evaluate.py eval.model=Qwen/Qwen2.5-Math-7B cluster.use_gpu=true
    python jobs/evaluate.py eval.model=runs/ray_train/toy-relift eval.benchmarks=gsm8k
    python jobs/evaluate.py model.path=smollm2-135m eval.benchmarks=gsm8k eval.max_questions=24
    ray job submit --address http://127.0.0.1:8265 -- python jobs/evaluate.py eval.model=...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from relift_ray.cli import command_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(command_main("evaluate", sys.argv[1:]))
