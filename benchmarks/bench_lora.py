"""Full fine-tune against LoRA (model.lora): the learner's memory and step time, and what a
weight sync sends and how long it takes, measured in the same run, each setting in a fresh
process.

Two models:

- ``smollm2``: SmolLM2-135M-Instruct with relift_ray/configs/smollm2_gsm8k.yaml's learner
  (bf16 autocast over fp32 weights, ZeRO-0, micro-batches of 2,400 tokens), on a ReLIFT step
  of 16 rollouts of 150 + 192 tokens and 4 demonstrations;
- ``paper``: the paper's shape as bench_learner_memory.py builds it (Qwen2 with the real
  151,936-entry vocabulary and a narrow body: the vocabulary is most of its weights, as the
  optimizer states of a 7B model are most of its learner memory), one 2,048-token rollout
  and one demonstration, logits in chunks.

Per setting: trainable parameters; the bytes of both AdamW states (RL and SFT) and the fp32
master weights; peak resident memory over the steps (ru_maxrss); the median step time; and
the sync: ``learner.sync_weights()`` into a transformers generator through the in-process
publisher, its bytes and seconds. The ratios LoRA / full are printed beside them.

``--generation``: sampling speed of vLLM's engine (the CPU build here) on SmolLM2, started
without LoRA (a full run's engine, or a LoRA run's with ``model.lora.sync=merged``) against
one started with LoRA and carrying an adapter of ``--rank`` on every linear layer (a LoRA
run's engine with ``sync=adapter``): 16 prompts of 150 tokens, 192 new tokens each (EOS
ignored), bf16, each engine in a fresh process.

    python benchmarks/bench_lora.py                      # both models (about 5 minutes)
    python benchmarks/bench_lora.py --models paper --rank 16 --json out.json
    python benchmarks/bench_lora.py --generation         # vLLM, with and without LoRA
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def paper_model(folder: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151_936, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16_384,
        tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)).save_pretrained(folder)


def _overrides(model: str, rank: int) -> list[str]:
    lora = [f"model.lora.rank={rank}"] if rank else []
    if model == "smollm2":
        return ["algo.minibatches=1", "algo.max_new_tokens=192",
                "train.autocast=bfloat16", "train.max_tokens_per_microbatch=2400",
                "train.zero_stage=0", "cluster.num_learners=1", *lora]
    return ["algo.minibatches=1", "algo.max_new_tokens=2048", "cluster.num_learners=1",
            "train.zero_stage=0", "train.max_tokens_per_microbatch=4096",
            "train.logits_chunk_tokens=1024", *lora]


def _batch(model: str, vocab: int, step: int):
    import torch

    from relift_ray.records import Sample, TrainBatch
    g = torch.Generator().manual_seed(step)

    def ids(n):
        return tuple(torch.randint(2, vocab, (n,), generator=g).tolist())
    n_rl, prompt, response, n_sft = (16, 150, 192, 4) if model == "smollm2" else (1, 256, 1792, 1)
    rl = tuple(Sample(ids(prompt), ids(response), 1.0 if i % 2 else -1.0, f"q{i // 4}")
               for i in range(n_rl))
    sft = tuple(Sample(ids(prompt), ids(response), 0.0, f"d{i}") for i in range(n_sft))
    return TrainBatch(step=step, rl=rl, sft=sft)


def one(args) -> dict:
    """One setting, in this process: ``args.steps`` learner steps and a sync after each."""
    import torch

    from relift_ray.config import load_config
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    from relift_ray.learner.weight_sync import InProcessPublisher
    from relift_ray.rollout.hf import HFGenerator
    torch.set_num_threads(2)
    single_process_group()
    cfg = load_config(overrides=_overrides(args.model_name, args.rank))
    learner = Learner(cfg, args.model, world=1)
    gen = HFGenerator(args.model, threads=2)
    pub = InProcessPublisher([gen])
    vocab = learner.engine.module.config.vocab_size
    trainable = sum(p.numel() for g in learner.opt.param_groups for p in g["params"])
    total = sum(p.numel() for p in learner.engine.module.parameters())
    steps, syncs = [], []
    for s in range(1, args.steps + 1):
        batch = _batch(args.model_name, vocab, s)
        t0 = time.perf_counter()
        learner.train_step(batch)
        steps.append(time.perf_counter() - t0)
        syncs.append(pub.publish(learner, s))
    opt = learner.opt
    state_bytes = sum(t.numel() * t.element_size()
                      for st in (opt.state, *(v for k, v in opt.phase_state.items()
                                             if k != opt.phase))
                      for per in st.values() for t in per.values() if torch.is_tensor(t))
    master = sum(p.numel() * p.element_size() for g in opt.param_groups for p in g["params"])
    return {"model": args.model_name, "rank": args.rank, "trainable": trainable,
            "parameters": total, "optimizer_state_mb": state_bytes / 2 ** 20,
            "trainable_weights_mb": master / 2 ** 20,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            # the first step builds what later steps reuse: the median of the others
            "step_seconds": statistics.median(steps[1:] if len(steps) > 1 else steps),
            "sync_mb": pub.sent_bytes / 2 ** 20,
            "sync_seconds": statistics.median(syncs[1:] if len(syncs) > 1 else syncs)}


def generation(args) -> dict:
    """vLLM's sampling speed, in this process: an engine of ``args.rank`` (0: no LoRA)."""
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from relift_ray.config import LoraConfig
    from relift_ray.data.lora import adapter_weights, wrap
    from relift_ray.rollout.vllm_engine import VLLMGenerator
    gen = VLLMGenerator(args.model, dtype="bfloat16", device="cpu", kv_cache_gib=1, threads=2,
                        max_model_len=512, lora_rank=args.rank)
    if args.rank:  # an adapter after an update: B drawn (a fresh adapter's B is 0)
        peft_model = wrap(AutoModelForCausalLM.from_pretrained(args.model),
                          LoraConfig(rank=args.rank), args.model)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if ".lora_B." in n:
                    p.copy_(0.01 * torch.randn(p.shape, generator=g))
        gen.load_weights(1, adapter_weights(peft_model))
    vocab = gen.tokenizer.vocab_size
    g = torch.Generator().manual_seed(1)
    prompts = [{"prompt_token_ids": torch.randint(2, vocab, (150,), generator=g).tolist()}
               for _ in range(16)]
    params = SamplingParams(max_tokens=192, ignore_eos=True, temperature=1.0, seed=0)
    times = []
    for _ in range(2):  # the first pass warms the engine up
        t0 = time.perf_counter()
        outs = gen.llm.generate(prompts, params, use_tqdm=False, lora_request=gen.lora_request)
        times.append(time.perf_counter() - t0)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"rank": args.rank, "tokens": tokens, "seconds": times[-1],
            "tokens_per_s": tokens / times[-1]}


def main_generation(args) -> int:
    from relift_ray.data.registry import resolve_model
    path = resolve_model("smollm2-135m")
    rows = {}
    for rank in (0, args.rank):
        cmd = [sys.executable, __file__, "--one", "--generation", "--model", path,
               "--rank", str(rank)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"vLLM rank {rank}: failed: {res.stderr.strip()[-600:]}")
            return 1
        rows[rank] = json.loads(res.stdout.strip().splitlines()[-1])
    full, lora = rows[0], rows[args.rank]
    print(f"\nvLLM on SmolLM2-135M, bf16: 16 x (150 + 192) tokens, LoRA rank {args.rank}")
    print(f"{'':26}{'no LoRA':>12}{'LoRA':>12}{'LoRA/none':>11}")
    for key, label, fmt in (("seconds", "generation s", "{:.1f}"),
                            ("tokens_per_s", "tokens/s", "{:.1f}")):
        print(f"{label:26}{fmt.format(full[key]):>12}{fmt.format(lora[key]):>12}"
              f"{lora[key] / full[key]:>11.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"generation": [full, lora]}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,paper")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (all-linear)")
    ap.add_argument("--steps", type=int, default=3, help="learner steps per setting")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--generation", action="store_true",
                    help="vLLM's sampling speed with and without a LoRA adapter")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--model-name", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(generation(args) if args.generation else one(args)))
        return 0
    from machine import cpu_busy, cpu_line

    from relift_ray.data.registry import resolve_model
    busy = cpu_busy()
    print(cpu_line(), flush=True)
    print(f"CPU busy before the run: {busy:.0%}" if busy is not None else "", flush=True)
    if args.generation:
        return main_generation(args)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            if name == "smollm2":
                path = resolve_model("smollm2-135m")
            else:
                path = str(Path(d) / "paper")
                paper_model(Path(path))
            pair = {}
            for rank in (0, args.rank):
                cmd = [sys.executable, __file__, "--one", "--model", path, "--model-name", name,
                       "--rank", str(rank), "--steps", str(args.steps)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{name} rank {rank}: failed: {res.stderr.strip()[-600:]}")
                    return 1
                pair[rank] = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(pair[rank])
            _print(name, pair[0], pair[args.rank])
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_busy": busy, "rows": rows}, indent=1))
    return 0


def _print(name: str, full: dict, lora: dict) -> None:
    print(f"\n{name}: {full['parameters'] / 1e6:.1f}M parameters, LoRA rank {lora['rank']}")
    print(f"{'':26}{'full':>12}{'LoRA':>12}{'LoRA/full':>11}")
    for key, label, fmt in (("trainable", "trainable parameters", "{:,.0f}"),
                            ("trainable_weights_mb", "fp32 trained weights MB", "{:.1f}"),
                            ("optimizer_state_mb", "AdamW states (2) MB", "{:.1f}"),
                            ("peak_gb", "peak resident GB", "{:.2f}"),
                            ("step_seconds", "learner step s", "{:.2f}"),
                            ("sync_mb", "sync MB", "{:.2f}"),
                            ("sync_seconds", "sync s", "{:.3f}")):
        ratio = lora[key] / full[key] if full[key] else float("nan")
        print(f"{label:26}{fmt.format(full[key]):>12}{fmt.format(lora[key]):>12}"
              f"{ratio:>11.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
