"""The learner step on SmolLM2-135M against a bare PyTorch loop on the same tokens.

One learner step is the RL update (``algo.minibatches`` AdamW steps over B x N sampled
responses) and, when the hard buffer filled, the SFT update (one AdamW step over the
demonstrations). This script times the project's ``Learner.train_step`` (DeepSpeed ZeRO-2,
the two-phase AdamW, the released losses with their entropy terms) and a bare loop written
with nothing but PyTorch (the HF model, ``torch.optim.AdamW``, cross-entropy from the
logits; ``DistributedDataParallel`` with two processes) on the same token ids, the same
process count and the same threads, in fresh child processes, and prints:

- each side's seconds per step (the median of ``--steps`` after ``--warmup``), and the ratio
  learner / bare (goal: at most 1.3x);
- the learner's breakdown: the no-grad log-prob pass, the model's forward passes that train,
  the losses (log-softmax and entropy over the vocabulary included), autograd's backward,
  AdamW's update, the collectives (all-reduce / reduce-scatter between processes), what
  DeepSpeed adds around them (gradient buckets and partitions, norms, clipping) and the rest
  (making the batch's tensors);
- one learner process with 2 threads against two processes with 1 thread each.

    python benchmarks/bench_learner.py                   # SmolLM2, 1 and 2 processes (~5 min)
    python benchmarks/bench_learner.py --processes 1     # one setting
    python benchmarks/bench_learner.py --set train.logits_chunk_tokens=0   # an older setting

The default shape is the SmolLM2 GSM8K comparison's (jobs/configs/compare_smollm2_gsm8k.yaml):
B 4 x N 4 responses of up to 192 tokens after prompts of about 110 tokens, and 4
demonstrations. Token ids are drawn at random with a fixed seed (the cost of a step does not
depend on which tokens they are); response lengths vary, as sampled ones do, so padding
costs what it costs in a run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = ("logprob_pass", "forward", "loss", "backward", "optimizer", "collectives", "deepspeed",
         "other")


def make_batch(args, vocab: int, rank: int, world: int):
    """Step-independent RL samples and demonstrations (this rank's shard)."""
    import torch

    from relift_ray.records import Sample, TrainBatch
    g = torch.Generator().manual_seed(7)

    def ids(n):
        return tuple(torch.randint(2, vocab, (n,), generator=g).tolist())

    rl, sft = [], []
    for q in range(args.batch):
        prompt = ids(args.prompt - 20 + 10 * q)
        for k in range(args.n):
            n_resp = args.response // 2 + int(torch.randint(0, args.response // 2 + 1, (1,),
                                                            generator=g))
            resp = ids(n_resp)
            blp = tuple(torch.rand(n_resp, generator=g).neg().tolist()) if args.sampler_logprobs \
                else ()
            rl.append(Sample(prompt, resp, 1.0 if (q + k) % 2 else -1.0, f"q{q}", blp))
    for d in range(args.demos):
        sft.append(Sample(ids(args.prompt), ids(args.response - 10 * d), 0.0, f"d{d}"))
    return TrainBatch(step=1, rl=tuple(rl), sft=tuple(sft)).shard(rank, world)


def init_group(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)


class Clock:
    """Adds up the seconds spent in wrapped functions, by part; nested parts count once (the
    outer part does not include the inner)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack: list[list] = []

    def wrap(self, part: str, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            self.stack.append([part, 0.0])
            try:
                return fn(*a, **kw)
            finally:
                _, inner = self.stack.pop()
                dt = time.perf_counter() - t0
                self.seconds[part] += dt - inner
                if self.stack:
                    self.stack[-1][1] += dt
        return timed


def learner_child(args, rank: int, world: int) -> dict:
    """Steps of the project's learner in this process; its seconds and breakdown."""
    import torch

    import relift_ray.learner.forward as F
    import relift_ray.learner.learner as L
    from relift_ray.config import load_config
    from relift_ray.imports import import_deepspeed
    clock = Clock()
    ds = import_deepspeed()
    for name in ("all_reduce", "reduce_scatter_fn", "reduce_scatter_tensor", "all_gather",
                 "all_gather_into_tensor", "broadcast", "reduce", "allreduce_fn"):
        if hasattr(ds.comm, name):
            setattr(ds.comm, name, clock.wrap("collectives", getattr(ds.comm, name)))
    fwd = L.forward_logprobs

    def forward(model, t, *a, **kw):
        part = "forward" if torch.is_grad_enabled() else "logprob_pass"
        return clock.wrap(part, fwd)(model, t, *a, **kw)

    L.forward_logprobs = forward
    F.token_logprobs = clock.wrap("loss", F.token_logprobs)  # log-softmax, entropy
    for name in ("policy_loss", "sft_loss", "logprob_mismatch", "tis_weights"):
        setattr(L, name, clock.wrap("loss", getattr(L, name)))
    torch.Tensor.backward = clock.wrap("backward", torch.Tensor.backward)  # autograd itself
    L.TwoPhaseAdamW.step = clock.wrap("optimizer", L.TwoPhaseAdamW.step)  # AdamW's update
    cfg = load_config(args.config, overrides=["cluster.num_learners=%d" % world,
                                              *args.set])
    learner = L.Learner(cfg, args.model, world=world, rank=rank)
    # what DeepSpeed adds around them: gradient buckets and partitions, norms, clipping
    learner.engine.backward = clock.wrap("deepspeed", learner.engine.backward)
    learner.engine.step = clock.wrap("deepspeed", learner.engine.step)
    batch = make_batch(args, learner.engine.module.config.vocab_size, rank, world)
    times, parts = [], []
    for i in range(args.warmup + args.steps):
        clock.seconds.clear()
        t0 = time.perf_counter()
        learner.train_step(batch)
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
            p = dict(clock.seconds)
            p["other"] = dt - sum(p.values())
            parts.append(p)
    return {"seconds": times, "parts": parts}


def bare_child(args, rank: int, world: int) -> dict:
    """The same tokens through a loop of plain PyTorch: forward and backward of the RL
    samples, in the config's micro-batches, an AdamW step; the same for the demonstrations,
    a second AdamW's step."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from relift_ray.config import load_config
    from relift_ray.learner.forward import microbatches, to_tensors
    cfg = load_config(args.config, overrides=list(args.set))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train()
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    rl_opt = torch.optim.AdamW(model.parameters(), lr=cfg.algo.lr)
    sft_opt = torch.optim.AdamW(model.parameters(), lr=cfg.algo.sft_lr)
    batch = make_batch(args, model.config.vocab_size, rank, world)
    pad = model.config.pad_token_id or 0

    def update(samples, opt, weighted: bool):
        # the same micro-batches as the learner's (train.max_tokens_per_microbatch), their
        # gradients accumulated, the loss a token mean over the whole batch
        samples = list(samples)
        lengths = [len(x.prompt_ids) + len(x.response_ids) for x in samples]
        parts = [to_tensors([samples[i] for i in rows], pad, "cpu") for rows in
                 microbatches(range(len(samples)), lengths,
                              cfg.train.max_tokens_per_microbatch)]
        n_tok = sum(t["mask"].sum() for t in parts)
        opt.zero_grad(set_to_none=True)
        for k, t in enumerate(parts):
            quiet = net.no_sync() if world > 1 and k < len(parts) - 1 else nullcontext()
            with quiet:
                with torch.autocast("cpu", dtype=torch.bfloat16,
                                    enabled=bool(cfg.train.autocast)):
                    logits = net(input_ids=t["ids"], attention_mask=t["attn"]).logits[:, :-1]
                nll = F.cross_entropy(logits.float().flatten(0, 1), t["ids"][:, 1:].flatten(),
                                      reduction="none").view_as(t["mask"])
                w = t["adv"][:, None] if weighted else 1.0
                ((nll * w * t["mask"]).sum() / n_tok).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        if batch.rl:
            update(batch.rl, rl_opt, True)
        if batch.sft:
            update(batch.sft, sft_opt, False)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"seconds": times}


def child(args) -> None:
    import torch
    rank, world = args.rank, args.processes[-1]
    torch.set_num_threads(args.threads)
    if world > 1:
        init_group(rank, world, args.port)
    else:
        from relift_ray.jobs.in_process import single_process_group
        single_process_group()
    out = (learner_child if args.child == "learner" else bare_child)(args, rank, world)
    if rank == 0:
        Path(args.result).write_text(json.dumps(out))


def run(which: str, processes: int, threads: int, args, result: Path) -> dict:
    from relift_ray.background import free_ports
    port = free_ports(1, "127.0.0.1")[0]
    base = [sys.executable, __file__, "--child", which, "--processes", str(processes),
            "--threads", str(threads), "--port", str(port), "--result", str(result),
            "--model", args.model, "--config", args.config, "--batch", str(args.batch),
            "--n", str(args.n), "--prompt", str(args.prompt), "--response", str(args.response),
            "--demos", str(args.demos), "--steps", str(args.steps), "--warmup",
            str(args.warmup)] + [x for s in args.set for x in ("--set", s)]
    if not args.sampler_logprobs:
        base.append("--no-sampler-logprobs")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen(base + ["--rank", str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(processes)]
    logs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{which} with {processes} process(es) failed:\n" +
                         "\n".join(x[-3000:] for x in logs))
    return json.loads(result.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="jobs/configs/compare_smollm2_gsm8k.yaml",
                    help="the run config whose algo/train settings the learner uses")
    ap.add_argument("--model", default="smollm2-135m", help="model.path (default SmolLM2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the learner (repeatable)")
    ap.add_argument("--processes", type=int, choices=[1, 2], action="append",
                    help="learner processes (default: 1 and 2)")
    ap.add_argument("--batch", type=int, default=4, help="questions per step (B)")
    ap.add_argument("--n", type=int, default=4, help="responses per question (N)")
    ap.add_argument("--prompt", type=int, default=110, help="prompt tokens (about)")
    ap.add_argument("--response", type=int, default=192, help="longest response, tokens")
    ap.add_argument("--demos", type=int, default=4, help="demonstrations (0: RL only)")
    ap.add_argument("--no-sampler-logprobs", dest="sampler_logprobs", action="store_false",
                    help="samples without the sampler's log-probs (the transformers generator)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=["learner", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from machine import cpu_busy

    from relift_ray.data.registry import resolve_model
    args.model = resolve_model(args.model)
    settings = [(p, 2 // p) for p in (args.processes or [1, 2])]
    busy = cpu_busy()
    print(f"SmolLM2 learner step: B {args.batch} x N {args.n}, prompts ~{args.prompt}, "
          f"responses {args.response // 2}-{args.response} tokens, {args.demos} "
          f"demonstrations; config {args.config} {' '.join(args.set)}; CPU busy before "
          f"{busy:.0%}" if busy is not None else "", flush=True)
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for procs, threads in settings:
            row = {"processes": procs, "threads": threads}
            for which in ("bare", "learner"):
                res = run(which, procs, threads, args, Path(d) / f"{which}{procs}.json")
                row[which] = statistics.median(res["seconds"])
                row[f"{which}_all"] = res["seconds"]
                if which == "learner":
                    row["parts"] = {k: statistics.median(p.get(k, 0.0) for p in res["parts"])
                                    for k in PARTS}
            row["ratio"] = row["learner"] / row["bare"]
            rows.append(row)
            share = ", ".join(f"{k} {v / row['learner']:.0%}" for k, v in row["parts"].items())
            print(f"{procs} process(es) x {threads} thread(s): learner {row['learner']:.2f} s, "
                  f"bare PyTorch {row['bare']:.2f} s per step: ratio {row['ratio']:.2f}x "
                  f"(goal <= 1.3x)\n  learner breakdown: {share}", flush=True)
    if len(rows) == 2:
        print(f"one learner process vs two: {rows[0]['learner']:.2f} s vs "
              f"{rows[1]['learner']:.2f} s per step ({rows[1]['learner'] / rows[0]['learner']:.2f}x"
              f" as long with two)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu_busy_before": busy, "args": {
            k: v for k, v in vars(args).items() if k not in ("child", "result", "port")},
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
