"""The scheduler: per-question records, the hard buffer, and the RL/SFT decision.

It is the one owner of training state that is not weights. Each step (``produce``, the first
method below) it samples B questions, has the generators produce N completions each, has the
reward pool score them, updates every question's record, feeds questions whose N rewards are
all 0 into the hard buffer (newest first), and hands the learners an RL batch plus, when the
buffer holds M demonstrations, an SFT batch of the M newest (the rest stay).
``state_dict`` / ``load_state_dict`` capture all of it as plain JSON data (saved with every
checkpoint).

Its parts live beside it: the records, buffer and sampler are pure data structures
(relift_ray.core.questions); the generators are one ``GeneratorGroup`` (fan-out, revival of
a generator that dies, pending weight loads: relift_ray.rollout.group); asynchronous rollouts
run in the producer thread of ``AheadProducer`` (relift_ray.scheduler.ahead). A dead reward
worker is retried by Ray itself. The scheduler's own death fails the learners' next call, and
the learner group restarts from its last checkpoint, which puts this state back.

``Scheduler`` is a plain class: a job makes it the ``scheduler`` actor (threaded, so every
learner can wait on the same step; relift_ray.scheduler.actor); tests and the in-process
runner drive it directly with in-process generators and reward workers.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict

import torch

from relift_ray import faults
from relift_ray.config import RunConfig
from relift_ray.core.algo import group_advantages
from relift_ray.core.questions import (
    HardBuffer,
    QuestionRecord,
    QuestionTable,
    Sampler,
    group_metrics,
    history_entry,
    steps_of,
)
from relift_ray.core.stats import source_scores
from relift_ray.records import BatchStats, Question, Sample, SamplingParams, ScoredGroup, TrainBatch
from relift_ray.rollout.calls import actor_pid, call, in_actor, is_actor, score_all
from relift_ray.rollout.evaluate import question_scores
from relift_ray.rollout.group import GeneratorGroup
from relift_ray.scheduler.ahead import AheadProducer
from relift_ray.tracking.console import say


class Scheduler(AheadProducer):
    def __init__(self, cfg: RunConfig, questions: list[Question], tokenizer, generators: list,
                 rewarders: list, val_questions: list[Question] | None = None):
        self.cfg, self.a = cfg, cfg.algo
        self.tok = tokenizer
        self.group = GeneratorGroup(generators, cfg.generator.weight_sync,
                                    cfg.generator.sync_timeout_s,
                                    cfg.cluster.generate_deadline_s)
        self.rewarders = rewarders
        if not questions:
            raise ValueError("no training questions")
        self.questions = questions  # what RL samples from
        self.with_demo = [q for q in questions if q.demo]  # what offline SFT samples from
        if not self.with_demo and cfg.algo.mode in ("sft", "sft_then_rl"):
            raise ValueError(f"algo.mode={cfg.algo.mode} needs training questions with a "
                             f"demonstration; none of the {len(questions)} has one")
        self.by_id = {q.id: q for q in questions}
        self.demos_available = len(self.with_demo)
        self.table = QuestionTable()
        self.buffer = HardBuffer()
        self.sampler = Sampler(len(questions), cfg.train.seed, drop_last=cfg.train.epochs > 0)
        self.steps = steps_of(cfg, len(questions))
        self.sft_sampler = Sampler(len(self.with_demo), cfg.train.seed + 7919)
        self.counters = {"step": 0, "sft_steps": 0, "demos_used_total": 0,
                         "fed_without_demo": 0}
        self.demos_used: set[str] = set()
        self._lock = threading.Lock()  # the state (records, buffer, samplers, counters)
        self._batch: TrainBatch | None = None
        self._init_ahead(cfg.algo.max_staleness)  # asynchronous rollouts (scheduler.ahead)
        self.timeline: list[dict] = []  # what ran when (relift_ray.tracking.timeline)
        # validation while training (tracking.eval_every): the questions, and the best and
        # last results so far (part of the state: a resumed run compares with the same best)
        self.val_questions = list(val_questions or [])
        self.val = {"best": None, "last": None}
        self._initial = self.state_dict()

    def produce(self, step: int) -> TrainBatch:
        """Step ``step``'s batch: an offline SFT batch (mode sft, sft_then_rl's first steps),
        or B questions rolled out N times, scored, recorded, fed to the hard buffer, with an
        SFT batch of the M newest demonstrations when the buffer holds M."""
        t0 = time.perf_counter()
        self._inject_kills(step)
        if self.cfg.is_sft_step(step):
            batch = self._offline_sft_batch(step)
            self._mark_generated(step)
        else:
            # 1. sample B questions   2. N rollouts each   3. rewards
            qs = [self.questions[i] for i in self.sampler.take(self.a.batch_size)]
            groups, stats = self._rollouts(step, qs)
            # 4. records, hard buffer, advantages   5. SFT batch when the buffer holds M
            for g in groups:
                self.table.observe(step, g)
            hardest = [g.question for g in groups if not any(g.rewards)]
            if self.a.buffer_feed == "hardest":
                fed = hardest
            else:  # ablation: the questions the policy solves at least once
                fed = [g.question for g in groups if any(g.rewards)]
            sft, mixed = (), False
            if self.cfg.uses_buffer:
                sft = self._buffer_and_sft(step, fed)
            elif self.a.mode == "mixed":  # this step's demonstrations join the RL loss
                with_demo = self._with_demo([g.question for g in groups]
                                            if self.a.mixed_demos == "all" else hardest)
                sft, mixed = (self._sft_samples(step, with_demo) if with_demo else ()), True
            batch = TrainBatch(step=step, rl=self._rl_samples(groups), sft=sft,
                               weight_version=self.behavior_version(step), sft_mixed=mixed,
                               stats=stats)
        self.counters["step"] = step
        self._add_state(batch.stats, time.perf_counter() - t0)
        return batch

    def next_batch(self, step: int, rank: int = 0, world: int = 1) -> TrainBatch:
        """The shard of step ``step``'s batch for learner ``rank``; on-policy the first caller
        makes it, asynchronously the producer thread has made it (or is making it)."""
        if self.lag:
            return self._next_batch_async(step).shard(rank, world)
        with self._lock:
            if self._batch is None or self._batch.step != step:
                if step != self.counters["step"] + 1:
                    raise RuntimeError(f"learner asked for step {step}, scheduler is at step "
                                       f"{self.counters['step']} (state out of sync with the "
                                       f"learner's checkpoint)")
                self._batch = self.produce(step)
            return self._batch.shard(rank, world)

    def behavior_version(self, step: int) -> int:
        """The weight version that samples batch ``step``: step - 1 on-policy, ``lag`` fewer
        with asynchronous rollouts (the first batches all use the base weights)."""
        return max(0, step - 1 - self.lag)

    def reset(self) -> None:
        """Back to the state before step 1 (a learner group that restarts with no checkpoint)."""
        self.load_state_dict(self._initial)

    # ------------------------------------------------------------ the step's parts
    def _rollouts(self, step: int, qs: list[Question]) -> tuple[list[ScoredGroup], BatchStats]:
        t0 = time.perf_counter()
        k = len(self.group)
        chunks = [qs[i::k] for i in range(k)]
        version = self.behavior_version(step)
        # the sampler's own log-probs: the off-policy correction and its statistics need them
        logprobs = bool(self.lag) or self.a.is_correction != "none"
        params = [SamplingParams(n=self.a.n_samples, temperature=self.a.temperature,
                                 top_p=self.a.top_p, max_new_tokens=self.a.max_new_tokens,
                                 seed=self.cfg.train.seed * 1_000_003 + step * 101 + i,
                                 logprobs=logprobs)
                  for i in range(k)]
        wall0 = time.time()
        outs = self.group.generate(chunks, params, version, step,
                                   fault=lambda: self._inject_kills(step, ("generator",)))
        self._mark_generated(step)
        self._note("generate", "generators", step, wall0, time.time())
        by_q = {}
        for chunk, out in zip(chunks, outs):
            by_q.update({q.id: comps for q, comps in zip(chunk, out)})
        comps = [by_q[q.id] for q in qs]
        versions = {c.weight_version for group in comps for c in group}
        if versions != {version}:  # on-policy step s samples with version s-1; async s-1-lag
            raise RuntimeError(f"step {step}: generators sampled with weight versions "
                               f"{sorted(versions)}, expected {version}")
        gen_s = time.perf_counter() - t0
        t1, wall1 = time.perf_counter(), time.time()
        pairs = [(c.text, q.answer) for q, group in zip(qs, comps) for c in group]
        rewards = score_all(self.rewarders, pairs, self.cfg.cluster.score_deadline_s, step)
        self._note("reward", "reward workers", step, wall1, time.time())
        n = self.a.n_samples
        groups = [ScoredGroup(q, tuple(g), tuple(r.value for r in rewards[i * n:(i + 1) * n]))
                  for i, (q, g) in enumerate(zip(qs, comps))]
        tokens = sum(len(c.response_ids) for g in comps for c in g)
        return groups, BatchStats(
            weight_version=version, gen_seconds=gen_s,
            gen_tokens_per_s=tokens / max(gen_s, 1e-9),
            response_length=tokens / max(len(pairs), 1),
            reward_seconds=time.perf_counter() - t1,
            reward_timeouts=sum(r.timed_out for r in rewards),
            reward_no_answer=sum(r.no_answer for r in rewards), **group_metrics(groups))

    def _rl_samples(self, groups: list[ScoredGroup]) -> tuple[Sample, ...]:
        rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        adv = group_advantages(rewards, normalize_std=self.a.rl_loss == "grpo")
        return tuple(Sample(c.prompt_ids, c.response_ids, float(adv[i, j]), g.question.id,
                            behavior_logprobs=c.logprobs)
                     for i, g in enumerate(groups) for j, c in enumerate(g.completions))

    def _with_demo(self, fed: list[Question]) -> list[str]:
        """Ids of the fed questions that have a demonstration; the others are only counted."""
        with_demo = [q.id for q in fed if q.demo]
        self.counters["fed_without_demo"] += len(fed) - len(with_demo)
        return with_demo

    def _buffer_and_sft(self, step: int, fed: list[Question]) -> tuple[Sample, ...]:
        with_demo = self._with_demo(fed)
        for qid in with_demo:
            self.table.get(qid).times_buffered += 1
        self.buffer.push(with_demo)
        m, trigger = self.a.buffer_size, self.a.sft_trigger
        if trigger == "buffer_full":  # the released algorithm: M demonstrations waiting
            due = len(self.buffer) >= m
        elif trigger == "every_k":  # ablation: a fixed schedule
            due = step % self.a.sft_every == 0 and len(self.buffer) > 0
        else:  # every_step
            due = len(self.buffer) > 0
        return self._sft_samples(step, self.buffer.take_newest(m)) if due else ()

    def _offline_sft_batch(self, step: int) -> TrainBatch:
        qids = list(dict.fromkeys(self.with_demo[i].id
                                  for i in self.sft_sampler.take(self.a.sft_batch_size)))
        return TrainBatch(step=step, sft=self._sft_samples(step, qids),
                          weight_version=self.behavior_version(step))

    def _sft_samples(self, step: int, qids: list[str]) -> tuple[Sample, ...]:
        self.counters["sft_steps"] += 1
        self.counters["demos_used_total"] += len(qids)
        self.demos_used.update(qids)
        self.table.mark_sft(step, qids)
        eos, cut = [self.tok.eos_token_id], self.cfg.data.max_demo_tokens
        out = []
        for qid in qids:
            q = self.by_id[qid]
            p = self.tok(q.prompt, add_special_tokens=False)["input_ids"]
            r = self.tok(q.demo, add_special_tokens=False)["input_ids"]
            if cut and len(r) >= cut:  # as released: its first tokens, EOS in the last place
                r = r[:cut - 1]
                self.counters["demos_cut"] = self.counters.get("demos_cut", 0) + 1
            out.append(Sample(tuple(p), tuple(r + eos), 0.0, qid))
        return tuple(out)

    def _inject_kills(self, step: int, kinds=("scheduler", "reward", "scorer")) -> None:
        """train.kill (relift_ray.faults): SIGKILL (or SIGSTOP) this scheduler, reward-0 or
        its scoring process when the step starts; generator-0 once its weight load is in and
        before its generate call is sent (``GeneratorGroup.generate``)."""
        if not self.cfg.train.kill or not in_actor():
            return
        action = faults.due(self.cfg, "scheduler", step) if "scheduler" in kinds else ""
        if action:
            say(f"[scheduler] train.kill scheduler@{step}: SIG{action.upper()}")
            faults.kill(action=action)
        for kind, actors in (("generator", self.generators), ("reward", self.rewarders)):
            if kind not in kinds or not (actors and is_actor(actors[0])):
                continue
            action = faults.due(self.cfg, kind, step)
            if action:
                say(f"[scheduler] train.kill {kind}@{step}: SIG{action.upper()} {kind}-0")
                faults.kill(actor_pid(actors[0]), action)
        if ("scorer" in kinds and self.rewarders and is_actor(self.rewarders[0])
                and faults.due(self.cfg, "scorer", step)):
            say(f"[scheduler] train.kill scorer@{step}: SIGKILL reward-0's scoring process")
            faults.kill(call(self.rewarders[0], "child_pid"))

    # ------------------------------------------------------------ weights
    @property
    def generators(self) -> list:
        return self.group.generators

    def remember_weights(self, version: int, refs: list) -> None:
        """The object-store reference of weight version ``version`` (in a list, so Ray passes
        the reference itself): what a restarted generator loads before it samples again."""
        self.group.remember(version, refs[0])

    def take_weights(self, version: int, refs: list) -> None:
        """Weight version ``version`` in the object store (``refs[0]``), from the learners:
        kept for restarted generators, loaded by every generator actor (queued before the
        next generate call, ``GeneratorGroup.queue_loads``), and counted as published."""
        self.group.queue_loads(version, refs[0])
        self.weights_published(version)

    def note_events(self, events: list[dict]) -> None:
        """Timeline entries from a learner (train and sync intervals)."""
        with self._cv:
            self.timeline.extend(events)

    def get_timeline(self) -> list[dict]:
        with self._cv:
            return list(self.timeline)

    def _note(self, what: str, lane: str, step: int, start: float, end: float) -> None:
        with self._cv:
            self.timeline.append({"what": what, "lane": lane, "step": step, "start": start,
                                  "end": end})

    # ------------------------------------------------------------ validation
    def total_steps(self) -> int:
        """The learner steps of this run: train.steps, or train.epochs passes over the
        training questions kept (whole batches only)."""
        return self.steps

    def validate(self, step: int) -> dict:
        """Validation of the weights the generators hold after step ``step`` (version
        ``step``), as the released trainer validates every test_freq steps: one sample per
        question at tracking.val_temperature, the mean score per data source, and their
        average (``score``). Remembers the best and the last; ``is_best`` says whether this
        one is the best so far (the learners then keep its policy)."""
        t = self.cfg.tracking
        if not self.val_questions:
            raise RuntimeError("tracking.eval_every: no validation questions (data.test)")
        # asynchronous rollouts: the batch sampled ahead first, so the validation's sampling
        # seeds never change its draws
        self.wait_made(step + self.lag + 1)
        t0 = time.time()
        scores = question_scores(self.generators, self.rewarders, self.val_questions,
                                 n=t.val_samples, temperature=t.val_temperature,
                                 max_new_tokens=self.a.max_new_tokens,
                                 seed=self.cfg.train.seed + 104729 * step,
                                 deadlines=(self.cfg.cluster.generate_deadline_s,
                                            self.cfg.cluster.score_deadline_s), step=step)
        per = source_scores(self.val_questions, scores)
        result = {"step": step, "score": per.pop("mean"), "sources": per,
                  "seconds": time.time() - t0}
        with self._lock:
            best = self.val["best"]
            result["is_best"] = best is None or result["score"] > best["score"]
            if result["is_best"]:
                self.val["best"] = {k: v for k, v in result.items() if k != "is_best"}
            self.val["last"] = {k: v for k, v in result.items() if k != "is_best"}
            result["best_score"] = self.val["best"]["score"]
        self._note("validate", "generators", step, t0, time.time())
        return result

    def validation(self) -> dict:
        """{"best": ..., "last": ...}: the validations so far (None before the first)."""
        with self._lock:
            return dict(self.val)

    # ------------------------------------------------------------ figures and state
    def _add_state(self, stats: BatchStats, seconds: float) -> None:
        """The scheduler's state once the batch is made, into the batch's figures."""
        c = self.counters
        stats.buffer_size, stats.sft_steps = len(self.buffer), c["sft_steps"]
        stats.demos_used_unique, stats.demos_used_total = len(self.demos_used), \
            c["demos_used_total"]
        stats.demos_used_share = len(self.demos_used) / max(self.demos_available, 1)
        stats.fed_without_demo, stats.scheduler_seconds = c["fed_without_demo"], seconds

    def question_rows(self) -> list[dict]:
        with self._lock:
            return self.table.rows(self.by_id)

    def state_dict(self) -> dict:
        """The whole state, JSON-able. With asynchronous rollouts it waits for a batch in the
        making and includes the batches made ahead (their rollouts came from weights older
        than the checkpoint's, which a resumed run no longer has)."""
        with self._lock:
            out = {"records": {k: asdict(v) for k, v in self.table.records.items()},
                   "buffer": list(self.buffer.ids), "sampler": self.sampler.state_dict(),
                   "sft_sampler": self.sft_sampler.state_dict(),
                   "counters": dict(self.counters), "demos_used": sorted(self.demos_used),
                   "validation": dict(self.val)}
            if self.lag:
                with self._cv:
                    out["ready"] = [b.to_dict() for _, b in sorted(self._ready.items())]
            return out

    def load_state_dict(self, s: dict) -> None:
        with self._cv:
            self._epoch += 1  # a batch being made now is dropped when it is done
        with self._lock:
            self.table.records = {k: QuestionRecord(**{**v, "history": [history_entry(h) for h in
                                                                         v["history"]]})
                                  for k, v in s["records"].items()}
            self.buffer.ids = list(s["buffer"])
            self.sampler.load_state_dict(s["sampler"])
            self.sft_sampler.load_state_dict(s["sft_sampler"])
            self.counters = dict(s["counters"])
            self.demos_used = set(s["demos_used"])
            self.val = dict(s.get("validation") or {"best": None, "last": None})
            self._batch = None
            self._restore_ahead(self.counters["step"], s.get("ready", []))
            self.group.drop_pending()  # loads from learners now gone: they publish again
