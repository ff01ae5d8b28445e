"""The scheduler: per-question records, the hard buffer, and the RL/SFT decision.

It is the one owner of training state that is not weights. Each step it samples B questions,
has the generators produce N completions each, has the reward pool score them, updates every
question's record, feeds questions whose N rewards are all 0 into the hard buffer (newest
first), and hands the learners an RL batch plus, when the buffer holds M demonstrations, an SFT
batch of the M newest (the rest stay). ``state_dict`` / ``load_state_dict`` capture all of it
as plain JSON data (it is saved as JSON with every checkpoint).

A generator actor that dies mid-step is restarted by Ray; the scheduler reloads it with the
step's weight version (object-store sync keeps a reference to it) and samples its chunk again
with the same seed. A dead reward worker is retried by Ray itself. The scheduler's own death
fails the learners' next call, and the learner group restarts from its last checkpoint, which
puts this state back.

``QuestionTable``, ``HardBuffer`` and ``Sampler`` are plain data structures. ``Scheduler`` is
a plain class too: a job makes it the ``scheduler`` actor (threaded, so every learner can wait
on the same step); tests drive it in-process with in-process generators and reward workers.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field

import torch

from relift_ray import chaos
from relift_ray.console import say
from relift_ray.actors import actor_pid, call_all, in_actor, is_actor, score_all
from relift_ray.algo import group_advantages
from relift_ray.config import RunConfig
from relift_ray.records import Question, Sample, SamplingParams, ScoredGroup, TrainBatch
from relift_ray.weight_sync import check_versions

BUCKETS = ("easy", "medium", "hard", "hardest")


def bucket_of(pass_rate: float) -> str:
    """Easy >= 6/8, Medium 3-5/8, Hard 1-2/8, Hardest 0/8, scaled to any N."""
    if pass_rate == 0:
        return "hardest"
    if pass_rate < 3 / 8:
        return "hard"
    if pass_rate < 6 / 8:
        return "medium"
    return "easy"


@dataclass
class QuestionRecord:
    attempts: int = 0  # rollouts sampled
    correct: int = 0
    # [(step, pass rate, weight version that sampled it)] each time it was sampled
    history: list = field(default_factory=list)
    first_solved_step: int | None = None
    times_buffered: int = 0
    sft_steps: list = field(default_factory=list)  # learner steps whose SFT batch held it
    solved_after_sft: bool | None = None  # None until fine-tuned; then any success afterwards


class QuestionTable:
    def __init__(self):
        self.records: dict[str, QuestionRecord] = {}

    def get(self, qid: str) -> QuestionRecord:
        return self.records.setdefault(qid, QuestionRecord())

    def observe(self, step: int, group: ScoredGroup) -> None:
        rec = self.get(group.question.id)
        n_ok = sum(r > 0 for r in group.rewards)
        rec.attempts += len(group.rewards)
        rec.correct += n_ok
        version = group.completions[0].weight_version if group.completions else step - 1
        rec.history.append((step, group.pass_rate, version))
        if n_ok and rec.first_solved_step is None:
            rec.first_solved_step = step
        if rec.sft_steps:
            rec.solved_after_sft = bool(rec.solved_after_sft) or n_ok > 0

    def mark_sft(self, step: int, qids) -> None:
        for qid in qids:
            rec = self.get(qid)
            rec.sft_steps.append(step)
            if rec.solved_after_sft is None:
                rec.solved_after_sft = False

    def rows(self, questions: dict[str, Question]) -> list[dict]:
        out = []
        for qid, rec in sorted(self.records.items()):
            q = questions.get(qid)
            last = rec.history[-1][1] if rec.history else None
            out.append({"id": qid, "level": q.level if q else "", "source": q.source if q else "",
                        "attempts": rec.attempts, "correct": rec.correct, "last_pass_rate": last,
                        # step:pass rate, with @version when it was not step - 1 (async)
                        "pass_rate_history": " ".join(
                            f"{s}:{p:.3g}" + ("" if v == s - 1 else f"@{v}")
                            for s, p, v in rec.history),
                        "first_solved_step": rec.first_solved_step,
                        "times_buffered": rec.times_buffered,
                        "sft_steps": " ".join(map(str, rec.sft_steps)),
                        "solved_after_sft": rec.solved_after_sft})
        return out


class HardBuffer:
    """Question ids with demonstrations, newest first. A question already waiting moves to the
    front instead of appearing twice, so one SFT batch never holds a demonstration twice."""

    def __init__(self):
        self.ids: list[str] = []

    def __len__(self):
        return len(self.ids)

    def push(self, qids: list[str]) -> None:
        new = list(dict.fromkeys(qids))
        self.ids = new + [q for q in self.ids if q not in set(new)]

    def take_newest(self, m: int) -> list[str]:
        taken, self.ids = self.ids[:m], self.ids[m:]
        return taken


class Sampler:
    """Shuffled passes over the training questions; its position and RNG are checkpointed."""

    def __init__(self, n: int, seed: int, drop_last: bool = False):
        self.n, self.rng, self.drop_last = n, random.Random(seed), drop_last
        self.epoch, self.pos = 0, 0
        self.order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        self.rng.shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next ``k`` questions. A pass that has fewer than ``k`` left either continues
        into the next (the default) or, ``drop_last``, is cut there: every batch then comes
        from one pass, as a data loader with drop_last gives them (the released code's)."""
        out = []
        if self.drop_last and self.n - self.pos < k <= self.n:
            self.pos = self.n
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos, self.order = self.epoch + 1, 0, self._shuffle()
            take = min(k - len(out), self.n - self.pos)
            out += self.order[self.pos:self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "order": list(self.order),
                "rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos, self.order = s["epoch"], s["pos"], list(s["order"])
        self.rng.setstate(_as_rng_state(s["rng"]))


def _as_rng_state(s):
    # a state that went through pickling/YAML may have lists where random wants tuples
    return (s[0], tuple(s[1]), s[2])


class Scheduler:
    def __init__(self, cfg: RunConfig, questions: list[Question], tokenizer, generators: list,
                 rewarders: list, val_questions: list[Question] | None = None):
        self.cfg, self.a = cfg, cfg.algo
        self.tok = tokenizer
        self.generators, self.rewarders = generators, rewarders
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
        self._weights: tuple[int, object] | None = None  # (version, object ref), object store
        # Asynchronous rollouts (algo.max_staleness = lag > 0): a producer thread makes the
        # batches ahead of the learners. Guarded by _cv; taken after _lock, never before it.
        self.lag = cfg.algo.max_staleness
        self._cv = threading.Condition()
        self._ready: dict[int, TrainBatch] = {}  # made, not yet consumed by every learner
        self._next = 1  # the next batch the producer makes
        self._generated = 0  # the last batch whose rollouts are sampled
        self._published = -1  # the weight version the generators hold (-1: not known yet)
        self._epoch = 0  # bumped by load_state_dict: a batch made before it is dropped
        self._error: BaseException | None = None
        self._producer: threading.Thread | None = None
        self._closed = False
        self._loads: tuple = (None, [])  # (version, each generator's pending load): take_weights
        self.timeline: list[dict] = []  # what ran when (relift_ray.timeline)
        # validation while training (tracking.eval_every): the questions, and the best and
        # last results so far (part of the state: a resumed run compares with the same best)
        self.val_questions = list(val_questions or [])
        self.val = {"best": None, "last": None}
        self._initial = self.state_dict()

    def reset(self) -> None:
        """Back to the state before step 1 (a learner group that restarts with no checkpoint)."""
        self.load_state_dict(self._initial)

    # ------------------------------------------------------------ the producer, one step
    def behavior_version(self, step: int) -> int:
        """The weight version that samples batch ``step``: step - 1 on-policy, ``lag`` fewer
        with asynchronous rollouts (the first batches all use the base weights)."""
        return max(0, step - 1 - self.lag)

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

    # ------------------------------------------------------------ asynchronous rollouts
    def _next_batch_async(self, step: int) -> TrainBatch:
        self._start_producer()
        with self._cv:
            while step not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"making batch {step} failed: {self._error!r}") \
                        from self._error
                if step > self._next or (step < self._next and step not in self._ready):
                    raise RuntimeError(
                        f"learner asked for step {step}, scheduler makes batch {self._next} "
                        f"next (state out of sync with the learner's checkpoint)")
                self._cv.wait(1.0)
            for old in [s for s in self._ready if s < step]:  # every learner is past them
                del self._ready[old]
            return self._ready[step]

    def _start_producer(self) -> None:
        with self._cv:
            if self._producer is None or not self._producer.is_alive():
                self._error = None
                self._producer = threading.Thread(target=self._produce_ahead,
                                                  name="relift-producer", daemon=True)
                self._producer.start()

    def _produce_ahead(self) -> None:
        """Batch after batch, each as soon as the generators hold its weight version: while
        the learners train step s, batches up to s + lag are sampled (with version s - 1 for
        the last). Stops at train.steps or on an error, which the learners then raise."""
        while True:
            with self._cv:
                step, epoch = self._next, self._epoch
                if step > self.steps or self._closed:
                    return
                need = self.behavior_version(step)
                if self._published < need:
                    self._cv.wait(1.0)
                    continue
            try:
                with self._lock:
                    if epoch != self._epoch:
                        continue
                    batch = self.produce(step)
            except BaseException as e:  # the learners' next_batch raises it
                with self._cv:
                    self._error = e
                    self._cv.notify_all()
                return
            with self._cv:
                if epoch == self._epoch:  # not made stale by load_state_dict meanwhile
                    self._ready[step] = batch
                    self._next = step + 1
                    self._cv.notify_all()

    def wait_made(self, step: int) -> None:
        """Returns once batch ``step`` is made (or there is nothing more to make): the
        generators and reward workers are idle until the next weight version (the in-process
        runner evaluates on them then)."""
        with self._cv:
            while self.lag and self._next <= min(step, self.steps):
                if self._error is not None or self._closed:
                    return
                self._cv.wait(1.0)

    def close(self) -> None:
        """Stops the producer thread (it makes no further batch)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _mark_generated(self, step: int) -> None:
        with self._cv:
            self._generated = max(self._generated, step)
            self._cv.notify_all()

    def wait_generated(self, step: int, timeout: float = 3600.0) -> None:
        """Returns once batch ``step``'s rollouts are sampled: the learners publish weight
        version v only after the last batch to be sampled with v - 1 (v + lag) has been, so a
        batch is never sampled with other weights than its own version (determinism)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._generated < min(step, self.steps):
                if self._error is not None:
                    raise RuntimeError(f"making batch {self._next} failed: {self._error!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"batch {step} not sampled after {timeout:g} s")
                self._cv.wait(1.0)

    def weights_published(self, version: int) -> None:
        """The generators hold weight version ``version`` now (the learners' publisher)."""
        with self._cv:
            self._published = version
            self._cv.notify_all()

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

    def remember_weights(self, version: int, refs: list) -> None:
        """The object-store reference of weight version ``version`` (in a list, so Ray passes
        the reference itself): what a restarted generator loads before it samples again."""
        self._weights = (version, refs[0])

    def take_weights(self, version: int, refs: list) -> None:
        """Weight version ``version`` in the object store (``refs[0]``), from the learners:
        kept for restarted generators, loaded by every generator actor, and counted as
        published. The loads are not waited for: each queues at its generator before this
        scheduler's next generate call there (Ray runs one caller's calls to an actor in
        order); ``_generate`` collects their results, so a failed load fails the step."""
        self.remember_weights(version, refs)
        loads = [g.load_weights.remote(version, refs[0]) for g in self.generators]
        with self._cv:
            self._loads = (version, loads)
        self.weights_published(version)

    def produce(self, step: int) -> TrainBatch:
        t0 = time.perf_counter()
        self._inject_kills(step)
        if self.cfg.is_sft_step(step):
            batch = self._offline_sft_batch(step)
            self._mark_generated(step)
        else:
            # 1. sample B questions   2. N rollouts each   3. rewards
            qs = [self.questions[i] for i in self.sampler.take(self.a.batch_size)]
            groups, gen_metrics = self._rollouts(step, qs)
            # 4. records, hard buffer, advantages   5. SFT batch when the buffer holds M
            for g in groups:
                self.table.observe(step, g)
            if self.a.buffer_feed == "hardest":
                fed = [g.question for g in groups if not any(g.rewards)]
            else:  # ablation: the questions the policy solves at least once
                fed = [g.question for g in groups if any(g.rewards)]
            sft, mixed = (), False
            if self.cfg.uses_buffer:
                sft = self._buffer_and_sft(step, fed)
            elif self.a.mode == "mixed":  # this step's demonstrations join the RL loss
                with_demo = self._with_demo(fed)
                sft, mixed = (self._sft_samples(step, with_demo) if with_demo else ()), True
            batch = TrainBatch(step=step, rl=self._rl_samples(groups), sft=sft,
                               weight_version=self.behavior_version(step), sft_mixed=mixed,
                               metrics={**gen_metrics, **_group_metrics(groups)})
        self.counters["step"] = step
        batch.metrics.update(self._state_metrics())
        batch.metrics["scheduler_seconds"] = time.perf_counter() - t0
        return batch

    def _rollouts(self, step: int, qs: list[Question]) -> tuple[list[ScoredGroup], dict]:
        t0 = time.perf_counter()
        k = len(self.generators)
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
        outs = self._generate(chunks, params, version)
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
        rewards = score_all(self.rewarders, pairs)
        self._note("reward", "reward workers", step, wall1, time.time())
        n = self.a.n_samples
        groups = [ScoredGroup(q, tuple(g), tuple(r.value for r in rewards[i * n:(i + 1) * n]))
                  for i, (q, g) in enumerate(zip(qs, comps))]
        tokens = sum(len(c.response_ids) for g in comps for c in g)
        return groups, {"weight_version": version, "gen_seconds": gen_s,
                        "gen_tokens_per_s": tokens / max(gen_s, 1e-9),
                        "response_length": tokens / max(len(pairs), 1),
                        "reward_seconds": time.perf_counter() - t1,
                        "reward_timeouts": sum(r.timed_out for r in rewards),
                        "reward_no_answer": sum(r.no_answer for r in rewards)}

    # ------------------------------------------------------------ generators that die
    def _generate(self, chunks: list, params: list, version: int) -> list:
        """Each generator's completions for its chunk. A generator actor that dies (Ray
        restarts it: max_restarts) is given weight version ``version`` again and its chunk is
        sampled again with the same seed, so the step is the one it would have been."""
        if not self.generators or not is_actor(self.generators[0]):
            return call_all(self.generators, "generate", list(zip(chunks, params)))
        import ray
        refs = [g.generate.remote(c, p) for g, c, p in zip(self.generators, chunks, params)]
        with self._cv:  # the weight loads queued before these calls (take_weights)
            (loaded, loads), self._loads = self._loads, (None, [])
        for load in loads:
            try:
                check_versions([ray.get(load)], loaded)
            except ray.exceptions.RayActorError:
                pass  # the generator died: its generate call fails too and revives it below
        outs = []
        for i, ref in enumerate(refs):
            for attempt in range(GENERATOR_RETRIES + 1):
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if attempt == GENERATOR_RETRIES:
                        raise
                    self._revive(i, version, e)
                else:
                    held = {c.weight_version for group in out for c in group}
                    if not (held == {0} and version > 0) or attempt == GENERATOR_RETRIES:
                        outs.append(out)  # a wrong version left here fails the step's check
                        break
                    # a call queued while Ray restarted the actor ran on the base weights
                    self._revive(i, version, RuntimeError("restarted with weight version 0"))
                ref = self.generators[i].generate.remote(chunks[i], params[i])
        return outs

    def _revive(self, i: int, version: int, error: Exception) -> None:
        import ray
        gen = self.generators[i]
        say(f"[scheduler] generator {i} died ({type(error).__name__}); waiting for Ray to "
            f"restart it, then reloading weight version {version}")
        deadline = time.monotonic() + GENERATOR_RESTART_TIMEOUT_S
        while True:
            try:  # calls queue while Ray restarts the actor
                held = ray.get(gen.get_version.remote(), timeout=60)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"generator {i} did not come back within "
                                       f"{GENERATOR_RESTART_TIMEOUT_S} s") from error
                time.sleep(0.5)
        if held == version or version == 0:  # a restart loads the base weights: version 0
            return
        if self._weights is None or self._weights[0] != version:
            raise RuntimeError(
                f"generator {i} restarted holding weight version {held}; this scheduler has no "
                f"copy of version {version} to reload it with (generator.weight_sync="
                f"{self.cfg.generator.weight_sync}: only object_store keeps one); the learner "
                f"group restarts from its checkpoint and republishes") from error
        ray.get(gen.load_weights.remote(version, self._weights[1]))

    def _inject_kills(self, step: int) -> None:
        """train.kill (relift_ray.chaos): SIGKILL this scheduler, generator-0 or reward-0."""
        if not self.cfg.train.kill or not in_actor():
            return
        if chaos.due(self.cfg, "scheduler", step):
            say(f"[scheduler] train.kill scheduler@{step}: SIGKILL")
            chaos.kill()
        for kind, actors in (("generator", self.generators), ("reward", self.rewarders)):
            if actors and is_actor(actors[0]) and chaos.due(self.cfg, kind, step):
                say(f"[scheduler] train.kill {kind}@{step}: SIGKILL {kind}-0")
                chaos.kill(actor_pid(actors[0]))

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
                          weight_version=self.behavior_version(step), metrics={})

    def _sft_samples(self, step: int, qids: list[str]) -> tuple[Sample, ...]:
        self.counters["sft_steps"] += 1
        self.counters["demos_used_total"] += len(qids)
        self.demos_used.update(qids)
        self.table.mark_sft(step, qids)
        eos = [self.tok.eos_token_id]
        out = []
        for qid in qids:
            q = self.by_id[qid]
            p = self.tok(q.prompt, add_special_tokens=False)["input_ids"]
            r = self.tok(q.demo, add_special_tokens=False)["input_ids"] + eos
            out.append(Sample(tuple(p), tuple(r), 0.0, qid))
        return tuple(out)

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
        from relift_ray.evaluation import question_scores, source_scores
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
                                 seed=self.cfg.train.seed + 104729 * step)
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

    # ------------------------------------------------------------ metrics and state
    def _state_metrics(self) -> dict:
        c = self.counters
        return {"buffer_size": len(self.buffer), "sft_steps": c["sft_steps"],
                "demos_used_unique": len(self.demos_used), "demos_used_total": c["demos_used_total"],
                "demos_used_share": len(self.demos_used) / max(self.demos_available, 1),
                "fed_without_demo": c["fed_without_demo"]}

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
            self.table.records = {k: QuestionRecord(**{**v, "history": [_entry(h) for h in
                                                                         v["history"]]})
                                  for k, v in s["records"].items()}
            self.buffer.ids = list(s["buffer"])
            self.sampler.load_state_dict(s["sampler"])
            self.sft_sampler.load_state_dict(s["sft_sampler"])
            self.counters = dict(s["counters"])
            self.demos_used = set(s["demos_used"])
            self.val = dict(s.get("validation") or {"best": None, "last": None})
            self._batch = None
            with self._cv:
                self._ready = {b.step: b for b in map(TrainBatch.from_dict, s.get("ready", []))}
                self._next = self._generated = self.counters["step"]
                self._next += 1
                self._published, self._error = -1, None  # the learners publish first
                self._loads = (None, [])  # from learners now gone: they publish again
                self._cv.notify_all()


def _entry(h) -> tuple:
    # (step, pass rate, version); checkpoints before asynchronous rollouts kept no version
    return tuple(h) if len(h) == 3 else (h[0], h[1], h[0] - 1)


GENERATOR_RETRIES = 3  # a generator may die this many times within one step
GENERATOR_RESTART_TIMEOUT_S = 600


class SchedulerActor(Scheduler):
    """The scheduler as a job runs it: it reads its questions and tokenizer itself, from the
    config, and finds the generator and reward actors by name, so Ray can restart it from
    these small arguments alone (actor handles among an actor's constructor arguments make
    its restarts depend on objects that may be gone)."""

    def __init__(self, cfg_dict: dict, model_path: str, generator_names: list[str],
                 reward_names: list[str]):
        import ray

        from relift_ray.imports import skip_unused_modules
        skip_unused_modules()
        from transformers import AutoTokenizer

        from relift_ray.driver import load_data
        generators = [ray.get_actor(n) for n in generator_names]
        rewarders = [ray.get_actor(n) for n in reward_names]
        cfg = RunConfig.from_dict(cfg_dict)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        train, test, dropped = load_data(cfg, tokenizer, log=lambda line: None)
        self._data = {"test": test, "dropped": dropped, "train": len(train),
                      "demos": sum(q.demo is not None for q in train),
                      "steps": steps_of(cfg, len(train))}
        super().__init__(cfg, train, tokenizer, generators, rewarders, val_questions=test)

    def data_info(self) -> dict:
        """What the driver reports and evaluates on: the rendered test questions, and the
        training questions' count, long prompts dropped and demonstrations (the driver loads
        no tokenizer of its own)."""
        return self._data


def steps_of(cfg: RunConfig, n_questions: int) -> int:
    """train.steps, or with train.epochs > 0 that many passes of whole batches (drop_last:
    a pass's remainder smaller than algo.batch_size is not trained on)."""
    if cfg.train.epochs <= 0:
        return cfg.train.steps
    per_epoch = n_questions // cfg.algo.batch_size
    if per_epoch == 0:
        raise ValueError(f"train.epochs={cfg.train.epochs}: {n_questions} training questions "
                         f"make no whole batch of algo.batch_size={cfg.algo.batch_size}")
    return cfg.train.epochs * per_epoch


def _group_metrics(groups: list[ScoredGroup]) -> dict:
    counts = {b: 0 for b in BUCKETS}
    for g in groups:
        counts[bucket_of(g.pass_rate)] += 1
    rewards = [r for g in groups for r in g.rewards]
    return {"reward_mean": sum(rewards) / max(len(rewards), 1),
            **{f"bucket_{b}": n for b, n in counts.items()}}
