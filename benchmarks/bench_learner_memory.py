"""Peak memory of one learner update at the paper's shapes, against the token budget.

The paper's run (relift_ray/configs/paper.yaml) trains Qwen2.5-Math-7B on 1,024-token prompts with
8,192-token responses and a 151,936-entry vocabulary. Its logits alone are 9,216 x 151,936 x
4 bytes = 5.6 GB per sequence in fp32, and a one-pass update holds several such tensors
(logits, log-softmax, its exponent for the entropy, their gradients). This script builds a
Qwen2 model with the real vocabulary and a narrow body (hidden 64, one layer: the body's
memory is not the question here), and runs one RL update (``Learner.train_step``, DeepSpeed
ZeRO-2 on CPU, one process) on sequences of the paper's length, each setting in a fresh
process, printing its peak resident memory (ru_maxrss) and time:

- ``train.max_tokens_per_microbatch``: at most this many padded tokens per forward/backward;
- ``train.logits_chunk_tokens``: logits made and kept this many positions x rows at a time.

    python benchmarks/bench_learner_memory.py                 # the table (a few minutes)
    python benchmarks/bench_learner_memory.py --sequences 4   # a bigger minibatch per rank

A one-pass update of even one 9,216-token sequence needs about 26 GB here (more than this
machine's 24 GB), so the one-pass rows use shorter sequences; the micro-batched, chunked rows
run the full length.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB, PROMPT, RESPONSE = 151_936, 1_024, 8_192


def build_model(folder: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16_384,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)).save_pretrained(folder)


def one(args) -> dict:
    """One update in this process; returns its figures."""
    sys.path.insert(0, str(ROOT))
    import torch

    from relift_ray.config import load_config
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    from relift_ray.records import Sample, TrainBatch
    torch.set_num_threads(2)
    single_process_group()
    cfg = load_config(overrides=[
        "cluster.num_learners=1", "algo.minibatches=1", f"algo.max_new_tokens={RESPONSE}",
        f"train.max_tokens_per_microbatch={args.budget}",
        f"train.logits_chunk_tokens={args.chunk}"])
    learner = Learner(cfg, args.model, world=1)
    g = torch.Generator().manual_seed(1)
    prompt, response = args.prompt, args.response
    rows = tuple(Sample(tuple(torch.randint(2, VOCAB, (prompt,), generator=g).tolist()),
                        tuple(torch.randint(2, VOCAB, (response,), generator=g).tolist()),
                        1.0 if i % 2 else -1.0, f"q{i}") for i in range(args.sequences))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    m = learner.train_step(TrainBatch(step=1, rl=rows))
    return {"budget": args.budget, "chunk": args.chunk, "sequences": args.sequences,
            "tokens_per_sequence": prompt + response, "seconds": time.perf_counter() - t0,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "before_update_gb": rss0 / 2 ** 20, "loss": m["rl/loss"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=2, help="sequences in the update")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, default=PROMPT, help=argparse.SUPPRESS)
    ap.add_argument("--response", type=int, default=RESPONSE, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args)))
        return 0
    full = PROMPT + RESPONSE
    settings = [  # (budget, chunk, prompt, response)
        (0, 0, 256, 768), (0, 0, 512, 1536),  # one pass, shorter sequences
        (full, 0, 256, 768),
        (full, 4096, PROMPT, RESPONSE), (full, 2048, PROMPT, RESPONSE),
        (full, 1024, PROMPT, RESPONSE), (2 * full, 1024, PROMPT, RESPONSE)]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        build_model(Path(d))
        print(f"{'max_tokens_per_microbatch':>26}{'logits_chunk_tokens':>21}{'sequences':>11}"
              f"{'tokens each':>13}{'peak GB':>9}{'seconds':>9}", flush=True)
        for budget, chunk, p, r in settings:
            cmd = [sys.executable, __file__, "--one", "--model", d, "--budget", str(budget),
                   "--chunk", str(chunk), "--prompt", str(p), "--response", str(r),
                   "--sequences", str(args.sequences)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{budget:>26}{chunk:>21}  failed: {res.stderr.strip()[-300:]}")
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{budget or 'one pass':>26}{chunk or 'whole':>21}{row['sequences']:>11}"
                  f"{row['tokens_per_sequence']:>13}{row['peak_gb']:>9.2f}"
                  f"{row['seconds']:>9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
