"""GPU figures: vLLM generation tokens/s, CUDA-IPC weight-sync seconds, DeepSpeed step time.

    python scripts/bench_gpu.py [--out bench.json] [--layers 22] [--skip-graphs]

Uses a Llama of TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP
5632) with random weights and the toy tokenizer (so a 27-token vocabulary: the figures leave
out a real vocabulary's embedding and output layer). Each stage prints one JSON line and runs
on its own: one that fails prints its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS: dict = {}
OUT_PATH = ["bench_gpu.json"]  # rewritten after every stage: a run cut off keeps what it measured


def stage(name):
    def wrap(fn):
        def run(*a, _tag: str = "", **k):
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
            except Exception as e:  # a benchmark reports, it does not stop at the first failure
                traceback.print_exc()
                out = {"error": f"{type(e).__name__}: {e}"}
            out["stage_seconds"] = round(time.perf_counter() - t0, 2)
            RESULTS[name + _tag] = out
            print(json.dumps({name + _tag: out}), flush=True)
            Path(OUT_PATH[0]).write_text(json.dumps(RESULTS, indent=1))
            return out
        return run
    return wrap


def build_model(path: Path, layers: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from relift_ray.data.toy.tokenizer import build_tokenizer
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632,
                      num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4,
                      max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return str(path), n


@stage("vllm_generation")
def bench_generation(gen, batch: int, tokens: int, label: str) -> dict:
    from vllm import SamplingParams

    from relift_ray.data.toy import task
    qs = task.make_questions("train", (1, 2, 3))[:batch]
    prompts = [{"prompt_token_ids": gen.tokenizer.encode(q.prompt, add_special_tokens=False)}
               for q in qs]
    sp = SamplingParams(n=1, temperature=1.0, max_tokens=tokens, ignore_eos=True, seed=0)
    gen.llm.generate(prompts[:8], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = gen.llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t0
    n = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"mode": label, "batch": batch, "new_tokens_each": tokens, "tokens": n,
            "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1)}


@stage("ipc_weight_sync")
def bench_sync(gen, model_path: str, repeats: int = 3) -> dict:
    from transformers import AutoModelForCausalLM

    from relift_ray.learner.weight_sync import IPCWeightSync
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).cuda()
    out = {}
    for bucket in (256, 1024):
        sync = IPCWeightSync([gen], bucket_mb=bucket, timeout_s=300)
        times = []
        for r in range(repeats):
            info = sync.send(model, version=100 + r)
            times.append(info["weight_sync_seconds"])
        out[f"bucket_{bucket}mb_seconds"] = [round(t, 3) for t in times]
        out["gib"] = round(info["weight_sync_bytes"] / 2 ** 30, 3)
    del model
    torch.cuda.empty_cache()
    return out


@stage("sleep_wake")
def bench_sleep(gen) -> dict:
    torch.cuda.synchronize()
    awake = gen.memory_gib()
    t0 = time.perf_counter()
    gen.sleep(level=1)
    t1 = time.perf_counter()
    asleep = gen.memory_gib()
    gen.wake_up()
    t2 = time.perf_counter()
    return {"gib_awake": round(awake, 2), "gib_asleep": round(asleep, 2),
            "sleep_s": round(t1 - t0, 3), "wake_s": round(t2 - t1, 3)}


@stage("deepspeed_step")
def bench_deepspeed(model_path: str, stage_: int, batch: int, seq: int) -> dict:
    from relift_ray.config import RunConfig
    from relift_ray.learner.learner import Learner
    from relift_ray.records import Sample

    cfg = RunConfig()
    cfg.cluster.use_gpu = True
    cfg.model.dtype = "bfloat16"
    cfg.train.zero_stage = stage_
    cfg.train.gradient_checkpointing = True
    cfg.algo.max_new_tokens = seq
    learner = Learner(cfg, model_path, world=1)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(tuple(torch.randint(3, 27, (64,), generator=g).tolist()),
                      tuple(torch.randint(3, 27, (seq - 64,), generator=g).tolist()),
                      1.0 if i % 2 else -1.0) for i in range(batch)]
    learner.rl_update(samples[:2])  # warm-up (allocations, kernels)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    learner.rl_update(samples)
    torch.cuda.synchronize()
    rl = time.perf_counter() - t0
    t0 = time.perf_counter()
    learner.sft_update(samples[: batch // 2])
    torch.cuda.synchronize()
    sft = time.perf_counter() - t0
    t0 = time.perf_counter()
    sd_bytes = sum(v.numel() * v.element_size() for v in learner.full_state_dict().values())
    export = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    del learner
    torch.cuda.empty_cache()
    return {"zero_stage": stage_, "batch": batch, "seq_len": seq, "rl_update_s": round(rl, 3),
            "rl_tokens_per_s": round(batch * seq / rl, 1), "sft_update_s": round(sft, 3),
            "export_state_dict_s": round(export, 3), "export_gib": round(sd_bytes / 2 ** 30, 3),
            "peak_gib": round(peak, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_gpu.json")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--skip-graphs", action="store_true")
    ap.add_argument("--only-sync", action="store_true", help="vLLM start + weight sync only")
    args = ap.parse_args()
    OUT_PATH[0] = args.out
    RESULTS["device"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    tmp = Path(tempfile.mkdtemp(prefix="relift-bench-"))
    model_path, n_params = build_model(tmp / "model", args.layers)
    RESULTS["model_params"] = n_params
    print(json.dumps({"device": RESULTS["device"], "params": n_params}), flush=True)

    import torch.distributed as dist
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    for k, v in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)  # what Ray Train sets in each learner worker
    try:
        import vllm
        RESULTS["vllm"] = vllm.__version__
        from relift_ray.rollout.generator import make_generator
        t0 = time.perf_counter()
        kw = dict(dtype="bfloat16", gpu_memory_utilization=0.3, enforce_eager=True,
                  max_model_len=1024)
        try:
            gen = make_generator("vllm", model_path, enable_sleep_mode=True, **kw)
        except Exception as e:
            RESULTS["sleep_mode_error"] = f"{type(e).__name__}: {e}"
            gen = make_generator("vllm", model_path, **kw)
        RESULTS["vllm_start_eager_s"] = round(time.perf_counter() - t0, 1)
        if not args.only_sync:
            bench_generation(gen, 256, 512, "eager", _tag="_eager")
            bench_generation(gen, 32, 512, "eager", _tag="_eager_b32")
        bench_sync(gen, model_path)
        if args.only_sync:
            Path(args.out).write_text(json.dumps(RESULTS, indent=1))
            return
        if "sleep_mode_error" not in RESULTS:
            bench_sleep(gen)
        del gen
        import gc
        gc.collect()
        torch.cuda.empty_cache()
    except Exception as e:
        traceback.print_exc()
        RESULTS["vllm_error"] = f"{type(e).__name__}: {e}"
    try:
        if not dist.is_initialized():
            torch.cuda.set_device(0)
            dist.init_process_group("nccl", rank=0, world_size=1)
        for s in (2, 3):
            bench_deepspeed(model_path, s, 16, 1024, _tag=f"_zero{s}")
    except Exception as e:
        traceback.print_exc()
        RESULTS["deepspeed_error"] = f"{type(e).__name__}: {e}"
    if not args.skip_graphs and "vllm" in RESULTS:
        try:
            t0 = time.perf_counter()
            gen = make_generator("vllm", model_path, dtype="bfloat16",
                                 gpu_memory_utilization=0.3, max_model_len=1024)
            RESULTS["vllm_start_graphs_s"] = round(time.perf_counter() - t0, 1)
            bench_generation(gen, 256, 512, "cuda_graphs", _tag="_graphs")
            bench_generation(gen, 32, 512, "cuda_graphs", _tag="_graphs_b32")
            del gen
        except Exception as e:
            traceback.print_exc()
            RESULTS["vllm_graphs_error"] = f"{type(e).__name__}: {e}"
    Path(args.out).write_text(json.dumps(RESULTS, indent=1))
    print(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
