"""The in-process runner: one whole run inside one process, the scheduler, one generator, one
reward worker and a single learner sharing the same CPU (or GPU).

The same classes and the same step as a distributed run (``Scheduler``, ``HFGenerator``,
``RewardWorker``, ``Learner`` under DeepSpeed, ``learner_step``), without actors between
them: the ``InProcessPublisher`` hands the weights to the generator object directly. With
``generator.backend=vllm`` the generator is the one actor: a ``VLLMGenerator`` of the run's
own (``run_generator``), its weights sent through the object store. The
comparison job runs many short runs side by side, each of them this function inside one Ray
task, so the start-up of an actor topology is not paid per run.

    result = run_in_process(cfg, model_path, train_qs, test_qs, eval_every=10, eval_k=4)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from relift_ray import faults
from relift_ray.config import RunConfig
from relift_ray.core.stats import summarize
from relift_ray.data.prompts import prepare_tokenizer
from relift_ray.learner.learner import Learner
from relift_ray.learner.step import learner_step
from relift_ray.learner.weight_sync import make_publisher
from relift_ray.records import Question, RunResult, SamplingParams
from relift_ray.rollout.calls import call, is_actor, score_all
from relift_ray.rollout.evaluate import EVAL_TEMPERATURE, question_scores
from relift_ray.rollout.hf import HFGenerator, trim_ids
from relift_ray.rollout.rewards import RewardWorker, worker_args
from relift_ray.scheduler.scheduler import Scheduler
from relift_ray.tracking.console import say


def single_process_group() -> None:
    """A world of one for DeepSpeed (gloo, in-memory store: no port is opened)."""

    if dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("LOCAL_WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_accuracy(gen, rewarder, test_qs: list[Question], max_new_tokens: int, eval_k: int,
                  seed: int, greedy_scores: dict | None = None) -> dict:
    """Greedy and avg@``eval_k`` (temperature 0.6) test accuracy, per question and summarized;
    ``greedy_scores`` reuses a greedy pass already made with the same weights."""
    if greedy_scores is None:
        greedy_scores = question_scores([gen], [rewarder], test_qs, max_new_tokens=max_new_tokens)
    sampled_scores = question_scores(
        [gen], [rewarder], test_qs, n=eval_k, temperature=EVAL_TEMPERATURE,
        max_new_tokens=max_new_tokens, seed=seed) if eval_k else {}
    return {"greedy": summarize(test_qs, greedy_scores), "greedy_scores": greedy_scores,
            "sampled": summarize(test_qs, sampled_scores) if eval_k else {},
            "sampled_scores": sampled_scores}


@torch.no_grad()
def greedy_profile(gen, rewarder, questions: list[Question], max_new_tokens: int,
                   eos_id: int | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Greedy answers to ``questions``: ({question id: reward}, {"response_length": mean
    tokens per response (EOS counted), "truncated": share cut at the budget (no EOS),
    "answered": share with a final answer the verifier could read ("answered_ids": which),
    "entropy": the policy's mean token entropy over its own responses}). The same greedy
    decoding as ``question_scores``; the logits only add the entropy, so a vLLM engine (an
    actor, which returns no full distributions) gives NaN there. ``eos_id``: the engine's end
    token."""

    if is_actor(gen):
        return _engine_profile(gen, rewarder, questions, max_new_tokens, eos_id)
    tok = gen.tokenizer
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    texts, lengths, cut, ent_sum = [], [], 0, 0.0
    for start in range(0, len(questions), gen.max_batch):
        chunk = questions[start:start + gen.max_batch]
        enc, res = gen.sample([q.prompt for q in chunk], params, logits=True)
        width = enc["input_ids"].shape[1]
        logp = torch.log_softmax(torch.stack(res.logits, dim=1).float(), -1)
        ent = -(logp.exp() * logp).sum(-1)  # [rows, new tokens]
        for row in range(len(chunk)):
            resp = trim_ids(res.sequences[row, width:].tolist(), tok.eos_token_id, tok.pad_token_id)
            cut += not resp or resp[-1] != tok.eos_token_id  # no EOS: cut at the budget
            texts.append(tok.decode(resp, skip_special_tokens=True))
            lengths.append(len(resp))
            ent_sum += ent[row, :len(resp)].sum().item()
    return _profile(rewarder, questions, texts, lengths, cut, ent_sum / max(sum(lengths), 1))


def _engine_profile(gen, rewarder, questions: list[Question], max_new_tokens: int,
                    eos_id: int | None) -> tuple[dict[str, float], dict[str, float]]:
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    outs = call(gen, "generate", questions, params)
    texts, lengths, cut = [], [], 0
    for group in outs:
        resp = group[0].response_ids
        cut += len(resp) >= max_new_tokens and (not resp or resp[-1] != eos_id)
        texts.append(group[0].text)
        lengths.append(len(resp))
    return _profile(rewarder, questions, texts, lengths, cut, float("nan"))


def _profile(rewarder, questions, texts, lengths, cut, entropy):
    rewards = score_all([rewarder], [(t, q.answer) for t, q in zip(texts, questions)])
    scores = {q.id: r.value for q, r in zip(questions, rewards)}
    n = max(len(lengths), 1)
    answered = sorted(q.id for q, r in zip(questions, rewards) if not r.no_answer)
    return scores, {"response_length": sum(lengths) / n, "truncated": cut / n,
                    "answered": len(answered) / n, "entropy": entropy,
                    "answered_ids": answered}


def run_generator(cfg: RunConfig, model_path: str, name: str, threads: int = 0):
    """The generator of one in-process run: ``generator.backend=transformers``, an
    ``HFGenerator`` in this process; ``vllm``, a ``VLLMGenerator`` in a Ray actor of its own
    (vLLM's CPU engine takes over the threads of the process it runs in), taking no CPUs of
    its own from Ray: it shares the run task's, sampling while the learner waits."""
    if cfg.generator.backend != "vllm":
        return HFGenerator(model_path, device=device_of(cfg), dtype=cfg.model.dtype,
                           eos_token=cfg.model.eos_token)
    # the runtime layer's engine actor: only a vLLM run starts one (and imports Ray for it)
    from relift_ray.runtime.topology import vllm_actor
    gen = vllm_actor(cfg, model_path, f"{name}-vllm", num_cpus=0, threads=threads)
    call(gen, "get_version")  # the engine is up (its errors surface here)
    return gen


def close_generator(gen) -> None:
    """End a run's engine actor (an in-process generator goes with its process)."""
    if is_actor(gen):
        # Ray only for actor handles
        import ray
        ray.kill(gen, no_restart=True)


def device_of(cfg: RunConfig) -> str:
    return "cuda" if cfg.cluster.use_gpu else "cpu"


@dataclass
class Parts:
    """The in-process run's parts: the same classes a distributed run makes actors of."""
    generator: object
    rewarder: object
    scheduler: object
    learner: object
    publisher: object
    eos_id: int | None = None  # the generator's end token (the test responses' profile)
    answered_ids: list | None = None  # the last evaluation's readable answers


def run_in_process(cfg: RunConfig, model_path: str, train_qs: list[Question],
                   test_qs: list[Question], *, eval_every: int = 0, eval_k: int = 0,
                   threads: int = 1, log=None, start_point: tuple | None = None) -> RunResult:
    """Train ``cfg.train.steps`` steps; evaluate greedily before, every ``eval_every`` steps and
    after, and avg@``eval_k`` at temperature 0.6 after. ``start_point``: the evaluation before
    training as ``greedy_profile`` returns it, when it was already made (the comparison job's
    base model evaluation)."""

    t_start = time.time()
    if threads:
        torch.set_num_threads(threads)  # runs side by side must not oversubscribe the cores
    torch.manual_seed(cfg.train.seed)
    single_process_group()
    rewarder = RewardWorker(*worker_args(cfg))
    parts = None
    try:
        parts = build(cfg, model_path, train_qs, rewarder, threads)
        history, curve, last_scores = train(cfg, parts, test_qs, eval_every, log or say,
                                            start_point)
        # the curve's last point is the greedy evaluation of the final policy
        final = test_accuracy(parts.generator, rewarder, test_qs, cfg.algo.max_new_tokens,
                              eval_k, cfg.train.seed, greedy_scores=last_scores)
        state = parts.scheduler.state_dict()
        return RunResult(
            name=cfg.name, mode=cfg.algo.mode, seed=cfg.train.seed, history=history,
            curve=curve, **final, sft_steps=state["counters"]["sft_steps"],
            demos_used_unique=len(state["demos_used"]),
            demos_used_ids=list(state["demos_used"]),
            demos_used_total=state["counters"]["demos_used_total"],
            demos_available=parts.scheduler.demos_available,
            learner_updates=sum(h["learner_updates"] for h in history),
            question_rows=parts.scheduler.question_rows(),
            reward_stats=rewarder.get_stats(), wall_seconds=time.time() - t_start,
            answered_ids=parts.answered_ids or [], questions_seen=len(state["records"]))
    finally:
        if parts is not None:
            parts.scheduler.close()
            close_generator(parts.generator)
        rewarder.close()


def build(cfg: RunConfig, model_path: str, train_qs: list[Question], rewarder,
          threads: int = 0) -> Parts:
    """The generator, scheduler, learner and publisher of one process around ``rewarder``."""
    tok = AutoTokenizer.from_pretrained(model_path)
    prepare_tokenizer(tok, cfg)
    gen = run_generator(cfg, model_path, cfg.name, threads)
    sched = Scheduler(cfg, train_qs, tok, [gen], [rewarder])
    learner = Learner(cfg, model_path, world=1)
    publisher = make_publisher(cfg, [gen], scheduler=sched)
    sched.weights_published(0)  # the generator starts with the base weights
    return Parts(gen, rewarder, sched, learner, publisher, tok.eos_token_id)


def train(cfg: RunConfig, p: Parts, test_qs: list[Question], eval_every: int,
          log, start_point: tuple | None = None) -> tuple[list[dict], list[dict], dict]:
    """``learner_step`` for every step, with greedy test evaluations: (each step's metrics,
    the accuracy curve, the last evaluation's per-question scores)."""

    max_tokens, steps = cfg.algo.max_new_tokens, cfg.train.steps
    last_scores, stats = start_point or greedy_profile(p.generator, p.rewarder, test_qs,
                                                       max_tokens, p.eos_id)
    stats = dict(stats)
    p.answered_ids = stats.pop("answered_ids", [])
    curve, history = [{"step": 0, **summarize(test_qs, last_scores), **stats}], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        for kind in faults.KINDS:  # train.kill: no actors here, the run fails instead
            if faults.due(cfg, kind, step):
                raise faults.InjectedFailure(f"{cfg.name}: train.kill {kind}@{step}")
        m = learner_step(p.learner, p.scheduler, p.publisher, step)
        m.step_seconds = time.perf_counter() - t0
        history.append({"step": step, **m.flat()})
        if (eval_every and step % eval_every == 0) or step == steps:
            # asynchronous rollouts: the batch being sampled ahead comes first (it holds the
            # generator; the evaluation's sampling seed would change its draws)
            p.scheduler.wait_made(step + cfg.algo.max_staleness + 1)
            last_scores, stats = greedy_profile(p.generator, p.rewarder, test_qs, max_tokens,
                                                p.eos_id)
            p.answered_ids = stats.pop("answered_ids")
            curve.append({"step": step, **summarize(test_qs, last_scores), **stats})
        if step % max(1, steps // 6) == 0 or step == steps:
            reward = float("nan") if m.batch.reward_mean is None else m.batch.reward_mean
            log(f"[{cfg.name}] step {step}/{steps} reward {reward:.3f} buffer "
                f"{m.batch.buffer_size} sft steps {m.batch.sft_steps} test "
                f"{curve[-1]['overall']:.3f}")
    return history, curve, last_scores
