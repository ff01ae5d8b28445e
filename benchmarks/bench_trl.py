"""relift_ray (RL mode) vs TRL's GRPOTrainer: completions per second on the same machine.

Both train the same toy base model on the same toy training questions with the same setting,
all read from ``relift_ray/configs/toy_rl.yaml``: B=16 prompts x N=8 completions per step, at most 48
new tokens, temperature 1.0, learning rate 1e-4 (constant), 2 optimizer steps per generated
batch, no KL term, float32, ``--threads`` torch threads (2 by default).

  relift_ray  the real job, in process: ``relift_ray.jobs.train.run(cfg)`` on a private local Ray
              cluster (it never joins a cluster already running on the machine). The seconds
              per step are the median of the differences between consecutive steps' MLflow
              timestamps (``reward_mean``), after ``--warmup`` steps; the last step is left out
              because it writes the final checkpoint (TRL saves nothing). The step's own
              ``*_seconds`` metrics give the breakdown.
  TRL         ``trl.GRPOTrainer`` on CPU in one process (transformers ``generate``, no vLLM).
              One TRL ``global_step`` is ONE OPTIMIZER STEP on B*N/2 = 64 completions; a batch
              of B*N = 128 completions is generated every 2 of them (``steps_per_generation=2``),
              so the seconds per batch are the differences between the end times of every
              second optimizer step (from a TrainerCallback), after ``--warmup`` batches.

completions/s = B*N / (seconds per batch) for both, and the ratio is relift / TRL. Each system
runs in its own subprocess, one after the other (never at the same time), so neither Ray's
processes nor TRL's threads compete with the other's. The machine must be otherwise idle:
with other work on the cores, a process with several torch threads can stall for seconds per
``generate`` call (on 2 busy cores we saw one call take 0.3 s or 7.5 s from run to run), so
each side prints how busy the machine was before it started.

Same work per step, not the same loss: both run one no-grad forward for the old log-probs and
two forward+backward passes on 64 completions; relift uses its ``algo.rl_loss`` (relift by
default), TRL its default ``loss_type``. The losses cost the same; the learning differs.

    pip install ".[bench]" "torch==2.13.0" "transformers>=5.16.1,<5.21"
    python benchmarks/bench_trl.py          # 30 relift steps, 20 TRL batches
    python benchmarks/bench_trl.py --quick  # a smoke test of both sides
    python benchmarks/bench_trl.py --rounds 3  # alternate; median ratio
    python benchmarks/bench_trl.py --staleness 0,1,2  # + async relift
    python benchmarks/bench_trl.py --learners 1 --json out.json    # 1 learner worker; save results
    python benchmarks/bench_trl.py --model smollm2 --steps 10 --trl-steps 5 \
        --warmup 2 --eval-questions 8    # SmolLM2-135M on GSM8K questions (bench_smollm2_rl.yaml)

``--model smollm2`` takes its setting from ``relift_ray/configs/bench_smollm2_rl.yaml`` (4 x 4
completions, 128 new tokens, one optimizer step per batch; relift with the vLLM CPU generator
and the bf16 autocast learner, TRL with ``bf16=True``); ``--trl-vllm`` asks TRL for its vLLM
colocate mode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_busy  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
# what --set may not change: the work compared (TRL's side is built from the same values) and
# the timing window (steps, checkpoints, validation)
FIXED_PREFIXES = ("algo.", "data.", "tracking.", "model.")
FIXED_KEYS = ("train.steps", "train.epochs", "train.checkpoint_every", "train.seed",
              "output_dir", "name")
CONFIGS = {"toy": ROOT / "relift_ray" / "configs" / "toy_rl.yaml",
           "smollm2": ROOT / "relift_ray" / "configs" / "bench_smollm2_rl.yaml"}


# ------------------------------------------------------------------ shared

def base_model(explicit: str | None, model: str = "toy") -> str:
    """The toy base model: --base-model, else the shipped weights (or, after a change of the
    recipe, the locally built and cached one: ``base_model_path``); SmolLM2 from its package
    (converted once into the cache)."""
    if explicit:
        return str(Path(explicit).expanduser().resolve())
    if model == "smollm2":
        from relift_ray.data.registry import resolve_model
        return resolve_model("smollm2-135m")
    from relift_ray.data.toy.model import base_model_path
    return str(base_model_path())


def load_cfg(args, model_path: str, extra: list[str] = ()):
    from relift_ray.config import load_config
    return load_config(CONFIGS[args.model], [f"model.path={model_path}", *extra])


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("torch", "transformers", "trl", "ray", "deepspeed", "accelerate"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# ------------------------------------------------------------------ relift_ray (child process)

def child_relift(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    import ray
    from mlflow.tracking import MlflowClient

    from relift_ray.jobs.train import run

    steps = args.steps
    overrides = [f"train.steps={steps}",
                 f"output_dir={args.out_dir}", "name=bench-rl",
                 "tracking.experiment=bench_trl",
                 # only the last step checkpoints (and is left out of the timing); no
                 # validation while training (TRL's loop validates nothing either)
                 f"train.checkpoint_every={steps}", "tracking.eval_every=0"]
    if args.eval_questions:  # the before/after test evaluations are outside the step timings
        overrides.append(f"data.max_test_questions={args.eval_questions}")
    if args.relift_threads:
        overrides.append(f"cluster.torch_threads={args.relift_threads}")
    if args.generator_threads:
        overrides.append(f"cluster.generator_threads={args.generator_threads}")
    if args.learners:
        overrides.append(f"cluster.num_learners={args.learners}")
    if args.generators:
        overrides.append(f"cluster.num_generators={args.generators}")
    lag = int(args.staleness)
    overrides.append(f"algo.max_staleness={lag}")
    overrides += args.set or []
    cfg = load_cfg(args, args.model_path, overrides)
    c = cfg.cluster
    setup = {"num_learners": c.num_learners, "num_generators": c.num_generators,
             "num_reward_workers": c.num_reward_workers, "torch_threads": c.torch_threads,
             "generator_threads": c.generator_threads or c.torch_threads,
             "ray_num_cpus": c.num_cpus, "zero_stage": cfg.train.zero_stage,
             "minibatches": cfg.algo.minibatches, "rl_loss": cfg.algo.rl_loss,
             "backend": cfg.generator.backend, "max_staleness": lag}
    print(f"[bench relift] setup {setup}", flush=True)
    # A private local cluster with its own token, as relift's init_ray starts one (without
    # the dashboard)
    from relift_ray.runtime.cluster import new_token, use_token
    use_token(new_token())
    ray.init(address="local", num_cpus=c.num_cpus, include_dashboard=False)
    t_call = time.time()
    try:
        summary = run(cfg)
    finally:
        t_end = time.time()
        ray.shutdown()

    client = MlflowClient(cfg.mlflow_uri)
    run_id = summary.run_id
    names = sorted(client.get_run(run_id).data.metrics)

    def history(name):
        by_step = {m.step: m for m in client.get_metric_history(run_id, name) if m.step >= 1}
        return [by_step[s] for s in sorted(by_step)]

    rewards = history("reward_mean")
    if len(rewards) != steps:
        raise RuntimeError(f"expected {steps} reward_mean entries in MLflow, got {len(rewards)}")
    stamps = {m.step: m.timestamp / 1000 for m in rewards}
    # steps warmup+1 .. steps-1: a step's time is its timestamp minus the previous step's
    window = [s for s in range(max(2, args.warmup + 1), steps)]
    if not window:
        raise RuntimeError(f"--steps {steps} with --warmup {args.warmup} leaves no step to time")
    diffs = [stamps[s] - stamps[s - 1] for s in window]
    breakdown = {}
    for name in names:
        if name.endswith("_seconds") and name != "wall_seconds":
            vals = {m.step: m.value for m in history(name)}
            xs = [vals[s] for s in window if s in vals]
            if xs:
                breakdown[name] = median(xs)
    def window_mean(name):
        vals = {m.step: m.value for m in history(name)} if name in names else {}
        xs = [vals[s] for s in window if s in vals]
        return sum(xs) / len(xs) if xs else None

    first = stamps[1]
    step1 = {m.step: m.value for m in history("step_seconds")}.get(1)
    B, N = cfg.algo.batch_size, cfg.algo.n_samples
    sec = median(diffs)
    return {"system": f"relift_ray s={lag}" if lag else "relift_ray", "setup": setup,
            "steps": steps, "timed_steps": window,
            "completions_per_step": B * N, "seconds_per_step": sec,
            "completions_per_s": B * N / sec, "step_times": diffs,
            "breakdown_median": breakdown,
            "reward_mean": window_mean("reward_mean"),
            "response_length_mean": window_mean("response_length"),
            "start_to_step1_s": first - t_call,
            "step1_seconds": step1,
            "wall_s": t_end - t_call, "run_id": run_id, "mlflow_uri": cfg.mlflow_uri,
            "metric_names": names}


# ------------------------------------------------------------------ TRL (child process)

def child_trl(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from relift_ray.core.scoring import math_reward
    from relift_ray.data.load import load_data

    cfg = load_cfg(args, args.model_path)
    a = cfg.algo
    tok = AutoTokenizer.from_pretrained(args.model_path)
    train_qs, _, _ = load_data(cfg, tok)  # the exact prompt texts the relift generators see
    # TRL tokenizes plain-text prompts with the tokenizer's defaults (add_special_tokens=True);
    # relift with add_special_tokens=False. Same ids for the toy tokenizer: checked here.
    p0 = train_qs[0].prompt
    same_ids = tok(p0)["input_ids"] == tok(p0, add_special_tokens=False)["input_ids"]
    if not same_ids:
        print("[bench trl] WARNING: TRL's prompt token ids differ from relift's "
              "(special tokens added)", flush=True)
    ds = Dataset.from_dict({"prompt": [q.prompt for q in train_qs],
                            "answer": [q.answer for q in train_qs]})
    extraction = cfg.data.answer_extraction

    def reward(completions, answer, **_):  # math_reward -> (reward, status)
        return [float(math_reward(c, t, extraction)[0]) for c, t in zip(completions, answer)]

    B, N, k = a.batch_size, a.n_samples, a.minibatches
    batches = args.trl_steps
    # "2 optimizer steps per generated batch", as relift does it (algo.minibatches=2: the 128
    # rollouts split in 2 minibatches of 64, one AdamW step each, every rollout used once):
    # per_device_train_batch_size=64, gradient_accumulation_steps=1, steps_per_generation=2
    # -> generation_batch_size = 64*1*2 = 128 = 16 prompts x 8, generated once and split into 2
    # optimizer steps. Not num_iterations=2 (GRPO's mu), which would run 2 optimizer steps on
    # the SAME 128 rollouts each (twice the training work). Both sides also run one no-grad
    # forward for the old log-probs (TRL: as steps_per_generation > gradient_accumulation_steps).
    gcfg = GRPOConfig(
        output_dir=str(Path(args.out_dir) / "trl"),
        per_device_train_batch_size=B * N // k,
        gradient_accumulation_steps=1,
        steps_per_generation=k,
        num_iterations=1,
        num_generations=N,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature, top_p=a.top_p, top_k=0,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=a.weight_decay, max_grad_norm=a.grad_clip,
        beta=0.0,  # no KL, no reference model
        max_steps=batches * k,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=True, fp16=False,
        # relift's train.autocast=bfloat16 (bf16 products, fp32 weights) is Trainer's bf16 on CPU
        bf16=cfg.train.autocast == "bfloat16",
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False,
            "vllm_max_model_length": cfg.data.max_prompt_tokens + a.max_new_tokens}
           if args.trl_vllm else {}),
        gradient_checkpointing=False,  # GRPOConfig's default is True; relift's is off
        disable_tqdm=True, dataloader_num_workers=0, seed=cfg.train.seed,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends, self.logs, self.t_begin, self.threads = {}, [], None, None

        def on_train_begin(self, *_, **__):
            self.t_begin = time.time()

        def on_step_end(self, _args, state, *_, **__):
            self.ends[state.global_step] = time.time()
            self.threads = torch.get_num_threads()  # what train() actually ran with

        def on_log(self, _args, state, _control, logs=None, **__):
            if logs:
                self.logs.append({"step": state.global_step, **logs})

    timer = Timer()
    t_call = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=gcfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    # seconds of TRL's own phases per generated batch, keyed by batch (1-based)
    phases: dict[str, dict[int, float]] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                b = trainer.state.global_step // k + 1
                d = phases.setdefault(name, {})
                d[b] = d.get(b, 0.0) + time.perf_counter() - t
        return wrapper

    for attr, name in (("_generate_and_score_completions", "gen_score_oldlogp_seconds"),
                       ("_generate_single_turn", "gen_seconds"),
                       ("_calculate_rewards", "reward_seconds")):
        setattr(trainer, attr, timed(name, getattr(trainer, attr)))
    trainer.train()
    t_end = time.time()

    ends = timer.ends
    if len(ends) != batches * k:
        raise RuntimeError(f"expected {batches * k} TRL optimizer steps, got {len(ends)}")
    # batch b = optimizer steps k*(b-1)+1 .. k*b; its time = end(k*b) - end(k*(b-1))
    window = [b for b in range(max(2, args.warmup + 1), batches + 1)]
    if not window:
        raise RuntimeError(f"--trl-steps {batches} with --warmup {args.warmup} leaves no batch")
    diffs = [ends[k * b] - ends[k * (b - 1)] for b in window]
    # the optimizer step that generates (the first of each batch) and the ones that do not
    gen_steps = [ends[k * (b - 1) + 1] - ends[k * (b - 1)] for b in window]
    reuse_steps = [ends[s] - ends[s - 1] for b in window for s in range(k * (b - 1) + 2, k * b + 1)]
    timed_steps = {s for b in window for s in range(k * (b - 1) + 1, k * b + 1)}

    def log_mean(key):
        xs = [lg[key] for lg in timer.logs if lg["step"] in timed_steps and key in lg]
        return sum(xs) / len(xs) if xs else None

    sec = median(diffs)
    return {"system": "TRL GRPOTrainer",
            "setup": {"generation": "vLLM colocate" if args.trl_vllm else "transformers",
                      "bf16": gcfg.bf16,"per_device_train_batch_size": gcfg.per_device_train_batch_size,
                      "gradient_accumulation_steps": gcfg.gradient_accumulation_steps,
                      "steps_per_generation": gcfg.steps_per_generation,
                      "generation_batch_size": gcfg.generation_batch_size,
                      "num_iterations": gcfg.num_iterations, "num_generations": N,
                      "torch_threads": timer.threads, "same_prompt_ids": same_ids,
                      "loss_type": gcfg.loss_type},
            "steps": batches, "optimizer_steps": batches * k, "timed_steps": window,
            "completions_per_step": B * N, "seconds_per_step": sec,
            "completions_per_s": B * N / sec, "step_times": diffs,
            "breakdown_median": {
                **{name: median([d[b] for b in window if b in d])
                   for name, d in sorted(phases.items())},
                "generating_optimizer_step_seconds": median(gen_steps),
                "other_optimizer_step_seconds": median(reuse_steps)},
            "reward_mean": log_mean("reward"),
            "response_length_mean": log_mean("completions/mean_length"),
            "start_to_step1_s": ends[k] - t_call,  # first batch (k optimizer steps) done
            "step1_seconds": ends[k] - timer.t_begin,
            "wall_s": t_end - t_call}


# ------------------------------------------------------------------ the parent

def run_child(which: str, args, model_path: str, out_dir: Path, steps: int, timeout: float,
              staleness: int = 0, round_: int = 1):
    tag = (f"{which}-s{staleness}" if staleness else which) + \
        (f"-r{round_}" if args.rounds > 1 else "")
    result = out_dir / f"{tag}.json"
    if (out_dir / tag).exists() and any((out_dir / tag).iterdir()):
        # relift would resume the earlier run of the same name (checkpoint, MLflow run)
        print(f"[bench] {out_dir / tag} is not empty: use a fresh --out-dir")
        return None
    log = out_dir / f"{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which,
           "--staleness", str(staleness),
           "--model-path", model_path, "--out-dir", str(out_dir / tag),
           "--result", str(result), "--threads", str(args.threads), "--model", args.model,
           *(["--trl-vllm"] if which == "trl" and args.trl_vllm else []),
           "--warmup", str(args.warmup), "--eval-questions", str(args.eval_questions),
           "--learners", str(args.learners or 0), "--generators", str(args.generators or 0),
           "--relift-threads", str(args.relift_threads or 0),
           "--generator-threads", str(args.generator_threads or 0),
           "--steps" if which == "relift" else "--trl-steps", str(steps),
           *[x for kv in (args.set or []) for x in ("--set", kv)]]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if which == "trl" and args.trl_vllm:  # vLLM's CPU build: its KV cache size, in GiB
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    busy = cpu_busy()
    if busy is not None and busy > 0.10:
        print(f"[bench] WARNING: the machine is already {busy:.0%} busy before {which} starts: "
              f"other work distorts the figures (with several torch threads, badly)", flush=True)
    print(f"\n[bench] {tag}: {steps} steps, log {log} (timeout {timeout:.0f}s)", flush=True)
    t0 = time.time()
    with log.open("w") as f:
        # own session: on a timeout the child and everything it started (Ray) go together
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    took = time.time() - t0
    if rc != 0 or not result.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:])
        print(f"[bench] {which} FAILED ({rc}) after {took:.0f}s; last lines of {log}:\n{tail}")
        return None
    print(f"[bench] {which} done in {took:.0f}s", flush=True)
    out = json.loads(result.read_text())
    out["cpu_busy_before"] = busy
    out["round"] = round_
    return out


def label(r: dict, args) -> str:
    return r["system"] + (f" #{r['round']}" if args.rounds > 1 else "")


def ratios_by_system(results: list[dict]) -> dict[str, list[float]]:
    """relift / TRL completions/s per round (each relift run against the TRL run of its own
    round: the two ran minutes apart), for each relift setting."""
    trl = {r["round"]: r for r in results if r["system"] == "TRL GRPOTrainer"}
    out: dict[str, list[float]] = {}
    for r in results:
        if r["system"].startswith("relift_ray") and r["round"] in trl:
            out.setdefault(r["system"], []).append(
                r["completions_per_s"] / trl[r["round"]]["completions_per_s"])
    return out


def report(results: list[dict], args, model_path: str) -> None:
    print("\n" + "=" * 78)
    v = versions()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
          f"torch threads {args.threads}; " + ", ".join(f"{k} {x}" for k, x in v.items() if x))
    print(f"base model: {model_path}")
    a = load_cfg(args, model_path).algo
    print(f"setting: {CONFIGS[args.model].relative_to(ROOT)}: {a.batch_size} prompts x "
          f"{a.n_samples} completions per step, <={a.max_new_tokens} new tokens, lr {a.lr:g}, "
          f"{a.minibatches} optimizer step(s) per batch, no KL, temperature {a.temperature}")
    for r in results:
        print(f"{r['system']}: {r['setup']}")
    print()
    hdr = f"{'system':<18}{'steps timed':>12}{'s/step (median)':>17}{'completions/s':>15}" \
          f"{'reward':>9}{'resp len':>10}{'to step 1 (s)':>15}{'busy before':>13}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        rw, rl = r.get("reward_mean"), r.get("response_length_mean")
        print(f"{label(r, args):<18}{len(r['timed_steps']):>12}{r['seconds_per_step']:>17.3f}"
              f"{r['completions_per_s']:>15.1f}"
              f"{(f'{rw:.3f}' if rw is not None else '-'):>9}"
              f"{(f'{rl:.1f}' if rl is not None else '-'):>10}"
              f"{r['start_to_step1_s']:>15.1f}"
              f"{(f'{busy:.0%}' if (busy := r.get('cpu_busy_before')) is not None else '-'):>13}")
    print(f"s/step: one batch of {a.batch_size}x{a.n_samples} completions (relift: 1 step; "
          f"TRL: {a.minibatches} optimizer step(s)), median "
          "over the timed steps\n(their min-max: " + "; ".join(
              f"{label(r, args)} {min(r['step_times']):.3f}-{max(r['step_times']):.3f}s"
              for r in results) + ")."
          "\nto step 1: relift from run() (Ray start, actors, test evaluation before training) "
          "to step 1 logged; TRL from model load to the first batch done.\nbusy before: the "
          "machine's CPU in use in the 3 s before that side started (other work).")
    for system, ratios in ratios_by_system(results).items():
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        print(f"\nratio {system} / TRL (completions/s): {median(ratios):.2f}x"
              + (f" (median of {len(ratios)} rounds: {each})" if len(ratios) > 1 else ""))
    for r in results:
        b = r["breakdown_median"]
        print(f"\n{label(r, args)} step breakdown (medians over the timed steps):")
        for k, x in b.items():
            print(f"  {k:<36}{x:>8.3f}s")
        if r["system"].startswith("relift_ray"):
            print(f"  run() call -> step 1 logged: {r['start_to_step1_s']:.1f}s (Ray start, model "
                  f"and actor start-up, test eval before training, step 1 itself "
                  f"{r['step1_seconds']:.1f}s)")
        else:
            print(f"  model load -> first batch done: {r['start_to_step1_s']:.1f}s (of which the "
                  f"first batch after train() began {r['step1_seconds']:.1f}s)")
    print("=" * 78, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="relift steps (default 30; quick 6)")
    ap.add_argument("--trl-steps", type=int, default=None,
                    help="TRL generated batches = 2 optimizer steps each (default 20; quick 5)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steps/batches left out at the start (default 3; quick 2)")
    ap.add_argument("--threads", type=int, default=2, help="TRL's torch threads")
    ap.add_argument("--relift-threads", type=int, default=0,
                    help="relift cluster.torch_threads (0 = the config's: toy.yaml's 1 per "
                         "learner, 2 for the generator, which use the 2 cores in turn)")
    ap.add_argument("--generator-threads", type=int, default=0,
                    help="relift cluster.generator_threads (0 = the config's)")
    ap.add_argument("--learners", type=int, default=0,
                    help="relift cluster.num_learners (0 = the config's)")
    ap.add_argument("--generators", type=int, default=0,
                    help="relift cluster.num_generators (0 = the config's)")
    ap.add_argument("--staleness", default="0",
                    help="relift algo.max_staleness values, comma-separated: one relift run "
                         "each (e.g. 0,1,2; asynchronous rollouts)")
    ap.add_argument("--eval-questions", type=int, default=32,
                    help="relift's before/after test evaluation on this many questions, outside "
                         "the timed steps (0 = the whole test split)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a relift config override (repeatable; relift's side only, and only "
                         "settings that leave the work unchanged), e.g. --set train.zero_stage=1")
    ap.add_argument("--only", choices=["relift", "trl"], help="run one side only")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both sides this many times, alternating (relift, TRL, relift, "
                         "...); the ratio is the median of the rounds' ratios")
    ap.add_argument("--model", choices=sorted(CONFIGS), default="toy",
                    help="toy: the toy model and task (toy_rl.yaml); smollm2: SmolLM2-135M on "
                         "GSM8K questions (bench_smollm2_rl.yaml: vLLM generator, bf16 learner)")
    ap.add_argument("--trl-vllm", action="store_true",
                    help="TRL generates with vLLM in colocate mode (the CPU build of vLLM) "
                         "instead of transformers")
    ap.add_argument("--quick", action="store_true", help="a smoke test: few steps")
    ap.add_argument("--base-model", help="the toy base model folder (default: shipped or built)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per side (default 1800; quick 900)")
    ap.add_argument("--out-dir", help="keep the runs here (default: a temp folder, removed)")
    ap.add_argument("--json", help="write the results here")
    # internal: one side in this process
    ap.add_argument("--child", choices=["relift", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: at least 1")
    for kv in args.set or []:  # the work compared must stay the same on both sides
        key = kv.split("=", 1)[0].strip()
        if "=" not in kv or key.startswith(FIXED_PREFIXES) or key in FIXED_KEYS:
            ap.error(f"--set {kv}: only relift settings that leave the work unchanged (cluster.*, "
                     f"train.zero_stage, ...); the setting compared ({', '.join(FIXED_PREFIXES)}"
                     f" and {', '.join(FIXED_KEYS)}) is the benchmark's own")
    q = args.quick
    args.steps = args.steps or (6 if q else 30)
    args.trl_steps = args.trl_steps or (5 if q else 20)
    args.warmup = (2 if q else 3) if args.warmup is None else args.warmup
    args.timeout = args.timeout or (900 if q else 1800)

    if args.child:
        sys.path.insert(0, str(ROOT))
        out = (child_relift if args.child == "relift" else child_trl)(args)
        Path(args.result).write_text(json.dumps(out, indent=1))
        return 0

    sys.path.insert(0, str(ROOT))
    model_path = base_model(args.base_model, args.model)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else \
        Path(tempfile.mkdtemp(prefix="bench-trl-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] base model {model_path}; runs in {out_dir}", flush=True)
    results = []
    try:
        lags = [int(x) for x in str(args.staleness).split(",")]
        runs = [("relift", k) for k in lags] + [("trl", 0)]
        for round_ in range(1, args.rounds + 1):
            for which, lag in runs:
                if args.only and args.only != which:
                    continue
                r = run_child(which, args, model_path, out_dir,
                              args.steps if which == "relift" else args.trl_steps,
                              args.timeout, staleness=lag, round_=round_)
                if r is not None:
                    results.append(r)
        if results:
            report(results, args, model_path)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"versions": versions(), "cpus": os.cpu_count(), "threads": args.threads,
                 "base_model": model_path, "results": results}, indent=1))
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    wanted = args.rounds * len([w for w, _ in runs if not args.only or w == args.only])
    return 0 if len(results) == wanted else 1


if __name__ == "__main__":
    sys.exit(main())
