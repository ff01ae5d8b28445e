"""The learner: DeepSpeed ZeRO engine, the one learner step, and the Ray Train loop.

``Learner`` holds one worker's model and optimizer (``TwoPhaseAdamW``: the released
algorithm's two AdamW states, RL and SFT, over the same weights) and runs the updates: RL
(logp_old recomputed here, ``algo.minibatches`` optimizer steps), then SFT when the batch
carries one. ``learner_step`` is the one step every runner uses: pull this rank's shard from
the scheduler, update, publish the new weights through the run's ``WeightPublisher``
(relift_ray.weight_sync). ``train_loop_per_worker`` runs it under Ray Train: it resumes from
``ray.train.get_checkpoint()`` and puts the scheduler back to the state saved with that same
checkpoint, so both sides agree after a crash; every ``checkpoint_every`` steps all ranks
write a checkpoint and report it. ``relift_ray.colocated`` runs the same step in one process.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from relift_ray import chaos
from relift_ray.actors import call, tell
from relift_ray.checkpoint import load_learner, save_learner
from relift_ray.console import say
from relift_ray.algo import (logprob_mismatch, policy_loss, released_entropy_weights,
                             released_sft_weights, sft_loss, tis_weights, token_logprobs)
from relift_ray.config import RunConfig
from relift_ray.records import Sample


class TwoPhaseAdamW(torch.optim.AdamW):
    """AdamW with two independent states and hyper-parameters ("rl" and "sft") over the same
    parameters: the released algorithm's two optimizers, as one object DeepSpeed can wrap."""

    def __init__(self, params, phases: dict[str, dict]):
        first = phases["rl"]
        super().__init__(params, lr=first["lr"], weight_decay=first["weight_decay"], foreach=False)
        self.phases = phases
        self.phase = "rl"
        self.phase_state = {"rl": self.state, "sft": defaultdict(dict)}

    def set_phase(self, phase: str) -> None:
        self.phase_state[self.phase] = self.state
        self.state = self.phase_state[phase]
        for g in self.param_groups:
            g["lr"] = self.phases[phase]["lr"]
            g["weight_decay"] = self.phases[phase]["weight_decay"]
        self.phase = phase

    def both_state_dicts(self) -> dict:
        current, out = self.phase, {}
        for ph in ("rl", "sft"):
            self.set_phase(ph)
            out[ph] = torch.optim.AdamW.state_dict(self)
        self.set_phase(current)
        return out

    def load_both_state_dicts(self, sd: dict) -> None:
        current = self.phase
        for ph in ("rl", "sft"):
            self.set_phase(ph)
            torch.optim.AdamW.load_state_dict(self, sd[ph])
        self.set_phase(current)


def to_tensors(samples: list[Sample], pad_id: int, device) -> dict:
    """Right-padded prompt+response; ``mask`` marks the positions that predict response tokens."""
    seqs = [list(s.prompt_ids) + list(s.response_ids) for s in samples]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1))
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        mask[i, len(s.prompt_ids) - 1:len(seq) - 1] = 1
    adv = torch.tensor([s.advantage for s in samples])
    out = {"ids": ids, "attn": attn, "mask": mask, "adv": adv}
    if samples and all(len(s.behavior_logprobs) == len(s.response_ids) > 0 for s in samples):
        # the sampler's log-probs sit where mask is 1 (the positions predicting the response)
        blp = torch.zeros((len(seqs), width - 1))
        for i, s in enumerate(samples):
            start = len(s.prompt_ids) - 1
            blp[i, start:start + len(s.response_ids)] = torch.tensor(s.behavior_logprobs)
        out["blp"] = blp
    return {k: v.to(device) for k, v in out.items()}


def _fit(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-crop or right-pad (zeros) [B, T] to [B, width]; the cut part is padding."""
    if x.shape[1] >= width:
        return x[:, :width]
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


# config fields of models whose logits are not just lm_head(hidden): the chunked path would
# miss the extra step, so they take the plain one
_LOGIT_EXTRAS = ("final_logit_softcapping", "logits_scaling", "logit_scale")


def forward_logprobs(model, t: dict, chunk_tokens: int = 0,
                     packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each next token, entropy), both [B, T-1] fp32. With ``chunk_tokens`` the
    logits are made from the final hidden states a chunk of positions at a time (about
    ``chunk_tokens`` rows x positions), each chunk recomputed in backward instead of kept, so
    no [tokens x vocabulary] tensor larger than one chunk ever exists.

    ``packed`` (train.padding_free): the rows go through the model as one sequence without
    their padding, each row's positions restarting at 0 so that attention stays within it
    (transformers builds the block-diagonal mask from the position ids); the results come
    back in the padded [B, T-1] layout, so nothing downstream changes."""
    if not packed:
        return _logprobs_of(model, t["ids"], t["attn"], None, chunk_tokens)
    lens = t["attn"].sum(1).tolist()  # rows are right-padded
    ids = torch.cat([t["ids"][i, :n] for i, n in enumerate(lens)])[None]
    pos = torch.cat([torch.arange(n, device=ids.device) for n in lens])[None]
    lp, ent = _logprobs_of(model, ids, None, pos, chunk_tokens)
    # the position ending row i predicts row i+1's first token: never a response position
    out_lp = lp.new_zeros(t["ids"].shape[0], t["ids"].shape[1] - 1)
    out_ent = torch.zeros_like(out_lp)
    rows = torch.cat([torch.full((n - 1,), i, device=ids.device) for i, n in enumerate(lens)])
    cols = torch.cat([torch.arange(n - 1, device=ids.device) for n in lens])
    starts = torch.tensor([0] + lens[:-1], device=ids.device).cumsum(0)
    src = torch.cat([torch.arange(a, a + n - 1, device=ids.device)
                     for a, n in zip(starts.tolist(), lens)])
    out_lp = out_lp.index_put((rows, cols), lp[0, src])
    out_ent = out_ent.index_put((rows, cols), ent[0, src])
    return out_lp, out_ent


def _logprobs_of(model, ids, attn, pos, chunk_tokens: int):
    net = getattr(model, "module", model)  # a DeepSpeed engine's model
    kw = {"input_ids": ids, "attention_mask": attn, "use_cache": False}
    if pos is not None:
        kw["position_ids"] = pos
    if not chunk_tokens or any(getattr(net.config, a, None) for a in _LOGIT_EXTRAS):
        logits = model(**kw).logits[:, :-1]
        return token_logprobs(logits, ids[:, 1:])
    from torch.utils.checkpoint import checkpoint
    hidden = net.get_decoder()(**kw).last_hidden_state[:, :-1]
    head, targets = net.get_output_embeddings(), ids[:, 1:]
    width = max(1, chunk_tokens // hidden.shape[0])
    parts = [checkpoint(_head_logprobs, head, hidden[:, a:a + width], targets[:, a:a + width],
                        use_reentrant=False) for a in range(0, hidden.shape[1], width)]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def check_packing(model) -> None:
    """train.padding_free needs a model whose attention keeps packed rows apart (transformers
    builds that mask from the position ids for most decoders); compare on two short rows and
    stop with a clear error when it does not."""
    vocab = model.config.vocab_size
    rows = [torch.arange(3, 8) % vocab, torch.arange(5, 8) % vocab]
    ids = torch.zeros((2, 5), dtype=torch.long)
    attn = torch.zeros((2, 5), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], attn[i, :len(r)] = r, 1
    t = {"ids": ids.to(model.device), "attn": attn.to(model.device)}
    with torch.no_grad():
        a, _ = forward_logprobs(model, t)
        b, _ = forward_logprobs(model, t, packed=True)
    valid = attn[:, 1:].bool().to(a.device)
    diff = float((a - b)[valid].abs().max())
    if diff > 1e-3:
        raise RuntimeError(
            f"train.padding_free=true: {type(model).__name__} lets packed rows attend to each "
            f"other (log-probs differ by {diff:.2e} from the padded forward); set "
            f"train.padding_free=false for this model")


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor):
    return token_logprobs(head(hidden), targets)


def microbatches(rows: list[int], lengths: list[int], budget: int,
                 padded: bool = True) -> list[list[int]]:
    """``rows`` packed into micro-batches of at most ``budget`` tokens, longest first: padded
    tokens (rows x the longest row), or with ``padded=False`` (train.padding_free) the rows'
    own tokens. A row longer than the budget goes alone. 0 = one batch."""
    rows = list(rows)
    if not budget or not rows:
        return [rows] if rows else []
    out, cur, widest, total = [], [], 0, 0
    for r in sorted(rows, key=lambda i: -lengths[i]):
        w = max(widest, lengths[r])
        size = (len(cur) + 1) * w if padded else total + lengths[r]
        if cur and size > budget:
            out.append(cur)
            cur, w, total = [], lengths[r], 0
        cur.append(r)
        widest, total = w, total + lengths[r]
    return out + [cur]


def _skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed's comm backend compiles (g++, about a minute on a fresh machine) and
    loads its shared-memory all-reduce op, which only its inference all-reduce uses; training
    reduces through the torch process group (gloo). Mark the op unavailable so neither
    happens."""
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _set_clip(engine, value: float) -> None:
    # DeepSpeed reads the clip value from its config (stage 0) or the ZeRO optimizer (1-3);
    # the two phases clip differently, so set both before each step.
    engine._config.gradient_clipping = value
    if hasattr(engine.optimizer, "clip_grad"):
        engine.optimizer.clip_grad = value


class Learner:
    """One learner worker's model, optimizer and updates; usable without Ray Train in tests."""

    def __init__(self, cfg: RunConfig, model_path: str, world: int = 1, rank: int = 0):
        from relift_ray.imports import import_deepspeed
        deepspeed = import_deepspeed()
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight load floods the job logs
        self.cfg, self.a, self.rank, self.world = cfg, cfg.algo, rank, world
        self.device = torch.device("cuda", torch.cuda.current_device()) if cfg.cluster.use_gpu \
            else torch.device("cpu")
        model = AutoModelForCausalLM.from_pretrained(model_path,
                                                     dtype=getattr(torch, cfg.model.dtype))
        # training mode: HF models recompute activations (gradient checkpointing) only when
        # training; the models we train have no dropout, so nothing else changes
        model.train()
        if cfg.train.gradient_checkpointing:
            model.config.use_cache = False
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        if cfg.train.padding_free:
            check_packing(model)
        self.opt = TwoPhaseAdamW(model.parameters(), {
            "rl": {"lr": self.a.lr, "weight_decay": self.a.weight_decay},
            "sft": {"lr": self.a.sft_lr, "weight_decay": self.a.weight_decay}})
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "train_batch_size": world, "gradient_clipping": self.a.grad_clip,
                     "zero_optimization": {"stage": cfg.train.zero_stage},
                     "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
                     "steps_per_print": 10 ** 9, "wall_clock_breakdown": False,
                     # TwoPhaseAdamW is torch's AdamW with a second state; ZeRO wraps it as such
                     "zero_allow_untested_optimizer": True}
        if not cfg.cluster.use_gpu:
            _skip_shm_comm_op()
        # distribution changes the code here: DeepSpeed reuses the process group Ray Train made
        self.engine, self.ds_opt, _, _ = deepspeed.initialize(
            model=model, optimizer=self.opt, config=ds_config, dist_init_required=False)

    def _step(self, phase: str, clip: float) -> float:
        self.opt.set_phase(phase)
        _set_clip(self.engine, clip)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def train_step(self, batch) -> dict:
        """One learner step on this rank's shard: the RL update, then the SFT update when the
        batch carries one (or, mode=mixed, the SFT term inside the RL loss)."""
        metrics = {}
        if batch.rl:
            metrics.update(self.rl_update(list(batch.rl),
                                          mixed_sft=list(batch.sft) if batch.sft_mixed else None))
        if batch.sft and not batch.sft_mixed:
            metrics.update(self.sft_update(list(batch.sft)))
        metrics["learner_updates"] = (self.a.minibatches if batch.rl else 0) + \
            int(bool(batch.sft) and not batch.sft_mixed)
        return metrics

    def _logprobs(self, t: dict):
        return forward_logprobs(self.engine, t, self.cfg.train.logits_chunk_tokens,
                                packed=self.cfg.train.padding_free)

    def _micro(self, rows, lengths) -> list[list[int]]:
        return microbatches(rows, lengths, self.cfg.train.max_tokens_per_microbatch,
                            padded=not self.cfg.train.padding_free)

    def rl_update(self, samples: list[Sample], mixed_sft: list[Sample] | None = None) -> dict:
        """``algo.minibatches`` optimizer steps over the RL samples (mode=mixed: each with its
        share of the demonstrations). Each minibatch goes through the model in micro-batches
        (train.max_tokens_per_microbatch; 0 = one) that accumulate gradients (DeepSpeed
        reduces them once, at the last) and whose losses are shares of the minibatch's: the
        RL loss stays the sum over the minibatch's tokens / L_max, its entropy term the
        minibatch's token mean, mode=mixed's SFT term the token mean over its
        demonstrations.

        Old log-probs (the policy that sampled) come from one no-grad pass before the first
        update, over the later minibatches only: the first is trained before any update, so
        its own forward pass gives them (detached, ratio exactly 1). The sampler comparison
        (its log-probs, when the samples carry them) needs them for every row."""
        mixed_sft = mixed_sft or []
        k = self.a.minibatches
        lengths = [len(x.prompt_ids) + len(x.response_ids) for x in samples]
        chunks = [c.tolist() for c in torch.arange(len(samples)).chunk(k)]
        blp = all(len(x.behavior_logprobs) == len(x.response_ids) > 0 for x in samples)
        old: dict[int, torch.Tensor] = {}  # row -> its old log-probs
        need = range(len(samples)) if blp else [i for c in chunks[1:] for i in c]
        with torch.no_grad():
            for rows in self._micro(need, lengths):
                lp, _ = self._logprobs(self._tensors([samples[i] for i in rows]))
                old.update(zip(rows, lp))
        sft_chunks = [mixed_sft[i::k] for i in range(k)] if mixed_sft else [[]] * k
        out = defaultdict(float)
        for j, (rows, demos) in enumerate(zip(chunks, sft_chunks)):
            n_tok = sum(len(samples[i].response_ids) for i in rows)
            ent_w = None
            if self.a.entropy_agg == "released":  # one token mean per released micro-batch
                w = released_entropy_weights([lengths[i] for i in rows],
                                             [len(samples[i].response_ids) for i in rows],
                                             self.a.entropy_token_budget)
                ent_w = dict(zip(rows, w.tolist()))
            parts = [("rl", m) for m in self._micro(rows, lengths)]
            parts += [("sft", m) for m in self._micro(
                range(len(demos)), [len(x.prompt_ids) + len(x.response_ids) for x in demos])]
            acc = defaultdict(float)
            for p, (kind, mrows) in enumerate(parts):
                self.engine.set_gradient_accumulation_boundary(p == len(parts) - 1)
                if kind == "rl":
                    loss, m = self._rl_share(samples, mrows, old, j == 0 and not blp, n_tok,
                                             len(rows), ent_w)
                else:
                    sub = [demos[i] for i in mrows]
                    t = self._tensors(sub)
                    logp, ent = self._logprobs(t)
                    s_loss, sm = sft_loss(logp, t["mask"], ent, alpha=self.a.sft_entropy_coef,
                                          n_tokens=sum(len(x.response_ids) for x in demos))
                    loss, m = self.a.mixed_sft_coef * s_loss, {"mixed_sft_nll": sm["sft_nll"]}
                self.engine.backward(loss)
                m["loss"] = loss.item()
                for key, v in m.items():
                    acc[key] += v
            acc["grad_norm"] = self._step("rl", self.a.grad_clip)
            for key, v in acc.items():
                out[f"rl/{key}"] += v / k
        if blp:  # the sampler vs this learner, on the same sampled tokens
            t = self._tensors(samples)
            lp = torch.stack([_fit(old[i][None], t["mask"].shape[1])[0]
                              for i in range(len(samples))])
            mm = logprob_mismatch(lp, t["blp"], t["mask"])
            out.update({f"mismatch/{key}": v for key, v in mm.items()})
        return dict(out)

    def _tensors(self, samples: list[Sample]) -> dict:
        return to_tensors(samples, self.pad_id, self.device)

    def _rl_share(self, samples, rows, old, own_old: bool, n_tok: int, n_seq: int,
                  ent_w: dict | None = None):
        """One RL micro-batch's loss: its share of its minibatch's."""
        t = self._tensors([samples[i] for i in rows])
        logp, ent = self._logprobs(t)
        width = logp.shape[1]
        lp_old = logp.detach() if own_old else \
            torch.stack([_fit(old[i][None], width)[0] for i in rows])
        is_w = None
        if self.a.is_correction != "none":
            if "blp" not in t:
                raise RuntimeError(f"algo.is_correction={self.a.is_correction}: the RL "
                                   f"samples carry no sampler log-probs")
            is_w = tis_weights(lp_old, t["blp"], t["mask"], cap=self.a.is_cap,
                               kind=self.a.is_correction)
        loss, m = policy_loss(logp, lp_old, t["adv"], t["mask"], ent, kind=self.a.rl_loss,
                              l_max=self.a.max_new_tokens, clip_eps=self.a.clip_eps,
                              entropy_coef=self.a.entropy_coef, is_weight=is_w,
                              n_tokens=n_tok, n_seqs=n_seq,
                              entropy_weight=None if ent_w is None else
                              torch.tensor([ent_w[i] for i in rows], device=self.device))
        if is_w is not None:
            m["is_weight_mean"] = float((is_w * t["mask"]).sum() / max(n_tok, 1))
        return loss, m

    def sft_update(self, samples: list[Sample]) -> dict:
        """One SFT optimizer step: the token mean over the demonstrations, in micro-batches
        as ``rl_update``'s."""
        lengths = [len(x.prompt_ids) + len(x.response_ids) for x in samples]
        parts = self._micro(range(len(samples)), lengths)
        n_tok = sum(len(x.response_ids) for x in samples)
        weights = None
        if self.a.sft_agg == "released":  # token means of released micro-batches, rows in order
            weights = released_sft_weights([len(x.response_ids) for x in samples],
                                           self.a.sft_micro_batch_size,
                                           len(samples) * self.world)
        acc = defaultdict(float)
        for p, rows in enumerate(parts):
            self.engine.set_gradient_accumulation_boundary(p == len(parts) - 1)
            t = self._tensors([samples[i] for i in rows])
            logp, ent = self._logprobs(t)
            loss, m = sft_loss(logp, t["mask"], ent, alpha=self.a.sft_entropy_coef,
                               n_tokens=n_tok, token_weight=None if weights is None else
                               weights[rows].to(self.device))
            self.engine.backward(loss)
            m["sft_loss"] = loss.item()
            for key, v in m.items():
                acc[key] += v
        acc["sft_grad_norm"] = self._step("sft", self.a.sft_grad_clip)
        return {f"sft/{k}": v for k, v in acc.items()}

    def gathered(self):
        """Context in which every parameter is whole (a no-op below ZeRO-3, where each rank
        holds the full weights); under ZeRO-3 all ranks must enter it together."""
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()),
                                                 enabled=self.cfg.train.zero_stage == 3)

    def full_state_dict(self) -> dict:
        """CPU copy of the full weights (all ranks must call under ZeRO-3)."""
        with self.gathered():
            return {k: v.detach().to("cpu", copy=True)
                    for k, v in self.engine.module.state_dict().items()}


# ------------------------------------------------------------------ the step and the loops

def learner_step(learner: Learner, scheduler, publisher, step: int, rank: int = 0,
                 world: int = 1) -> dict:
    """The one learner step, for the Ray Train loop and the one-process runner alike:

    1. this rank's shard of step ``step``'s batch from the scheduler (the first rank to ask
       makes it: questions, rollouts with weight version step-1, rewards, records, buffer);
    2. the RL update, and the SFT update when the hard buffer filled;
    3. weights version ``step`` to every generator (``publisher``).

    ``scheduler`` is the scheduler actor or a plain ``Scheduler``. Returns the step's metrics:
    the scheduler's figures, the learner's, and the seconds of each part."""
    t0 = time.perf_counter()
    batch = call(scheduler, "next_batch", step, rank, world)
    publisher.after_generation()
    t1, wall1 = time.perf_counter(), time.time()
    metrics = dict(batch.metrics)
    metrics.update(learner.train_step(batch))
    metrics["batch_wait_seconds"] = t1 - t0  # generation, reward, records and the transfer
    metrics["train_seconds"] = time.perf_counter() - t1
    wall2 = time.time()
    metrics["weight_sync_seconds"] = publisher.publish(learner, step)
    metrics["publish_wait_seconds"] = publisher.waited  # asynchronous: the batch sampled ahead
    metrics["staleness"] = step - 1 - batch.weight_version  # versions behind the learner
    metrics["sft_this_step"] = int(bool(batch.sft))
    if rank == 0:  # the timeline figure (relift_ray.timeline)
        lane = f"learners ({world})"
        tell(scheduler, "note_events", [
            {"what": "train", "lane": lane, "step": step, "start": wall1, "end": wall2},
            {"what": "sync", "lane": lane, "step": step, "start": wall2 + publisher.waited,
             "end": time.time()}])
    return metrics


def train_loop_per_worker(config: dict) -> None:
    """Each Ray Train worker: resume (or start), then ``learner_step`` until train.steps,
    checkpointing every train.checkpoint_every steps. Rank 0 logs every step to MLflow and
    prints the progress line."""
    import ray
    import ray.train

    from relift_ray.imports import skip_unused_modules
    from relift_ray.weight_sync import make_publisher
    skip_unused_modules()

    cfg = RunConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    scheduler, generators = ray.get(config["actors"])  # the driver's handles
    torch.manual_seed(cfg.train.seed + rank)
    if config.get("engines"):  # colocated: the GPU of the engine on this node (placement)
        from relift_ray.placement import pin_learner_gpu
        pin_learner_gpu(config["engines"])
    if cfg.cluster.torch_threads and not cfg.cluster.use_gpu:
        torch.set_num_threads(cfg.cluster.torch_threads)

    # Resume: DeepSpeed's own checkpoint (fp32 master weights, both optimizer phases) goes
    # into the engine built from the base model, so a bf16 run continues bit for bit.
    start, ckpt_dir = 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        ckpt_dir = tempfile.mkdtemp(prefix="relift-ckpt-")
        ckpt.to_directory(ckpt_dir)
        start = json.loads((Path(ckpt_dir) / "meta.json").read_text())["step"]
    t_ready = time.time()
    learner = Learner(cfg, config["model_path"], world, rank)
    if rank == 0 and config.get("job_start"):
        say(f"[learner] {world} learner(s) ready {time.time() - config['job_start']:.1f}s after "
            f"the job started (DeepSpeed engine: {time.time() - t_ready:.1f}s)")
    # The scheduler and the generators go back to exactly this checkpoint (or to the start):
    # after a crash Ray Train may restart from an older checkpoint than the newest.
    if ckpt_dir:
        load_learner(learner, Path(ckpt_dir), rank, world)
    if rank == 0:
        if ckpt_dir:
            state = json.loads((Path(ckpt_dir) / SCHEDULER_STATE).read_text())
            call(scheduler, "load_state_dict", state)
            say(f"[learner] resumed from the checkpoint of step {start}")
        else:
            call(scheduler, "reset")
    if ckpt_dir:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    publisher = make_publisher(cfg, generators, rank, scheduler)
    publisher.publish(learner, start)
    torch.distributed.barrier()  # no rank asks for a batch before the scheduler is restored
    tracker = None
    if rank == 0 and config.get("mlflow_run_key"):
        from relift_ray.tracking import StepLogger, shared_run_id
        tracker = StepLogger(config["mlflow_uri"],
                             lambda: shared_run_id(config["mlflow_run_key"]), cfg.name)

    # train.epochs: the steps follow from the training questions the scheduler kept
    cfg.train.steps = call(scheduler, "total_steps")
    t_prev = time.perf_counter()
    for step in range(start + 1, cfg.train.steps + 1):
        if rank == world - 1 and chaos.due(cfg, "learner", step):
            say(f"[learner] rank {rank}: train.kill learner@{step}: SIGKILL")
            chaos.kill()
        metrics = learner_step(learner, scheduler, publisher, step, rank, world)
        if cfg.tracking.eval_every and step % cfg.tracking.eval_every == 0:
            metrics.update(validate_step(learner, scheduler, step, rank, world, config,
                                         tracker))
        # Ray Train hears from the loop only when there is a checkpoint: it needs nothing
        # else (the metrics go to MLflow from rank 0), and in Ray Train V2 each report waits
        # for the controller's next poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default)
        # when the previous one is still queued, which reporting every step would pay.
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            t_ckpt = time.perf_counter()
            ckpt_path = save_checkpoint(learner, scheduler, step, rank, world, config)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(ckpt_path),
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
            metrics["checkpoint_seconds"] = time.perf_counter() - t_ckpt
        now = time.perf_counter()
        metrics["step_seconds"] = now - t_prev  # wall time since the previous step ended
        t_prev = now
        if rank == 0:
            if step == start + 1 and "mismatch/logprob_abs_diff_mean" in metrics:
                say(f"[learner] sampler vs learner log-probs of step {step}'s "
                    f"{metrics['mismatch/tokens']} tokens: mean |diff| "
                    f"{metrics['mismatch/logprob_abs_diff_mean']:.2e}, max "
                    f"{metrics['mismatch/logprob_abs_diff_max']:.2e} "
                    f"(algo.is_correction={cfg.algo.is_correction})")
            if step == start + 1 and config.get("job_start"):
                say(f"[learner] step {step} done {time.time() - config['job_start']:.1f}s "
                    f"after the job started")
            say(progress_line(step, cfg.train.steps, metrics))
            if tracker:
                tracker.log(step, metrics)  # in the background: MLflow is off the step's path
    if tracker:
        tracker.close()


SCHEDULER_STATE = "scheduler_state.json"
BEST_DIR = "best"  # <output_dir>/<name>/best: the best validation's policy


def validate_step(learner: Learner, scheduler, step: int, rank: int, world: int, config: dict,
                  tracker=None) -> dict:
    """Validation after step ``step`` (tracking.eval_every): rank 0 has the scheduler
    validate the generators, which hold this step's weights; when it is the best so far
    every rank takes part in gathering the weights and rank 0 writes the policy to
    <output_dir>/<name>/best (replacing the previous best) and tags the MLflow run."""
    box = [call(scheduler, "validate", step) if rank == 0 else None]
    if world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    val = box[0]
    out = {"val/score": val["score"], "val/seconds": val["seconds"],
           **{f"val/{src}": v for src, v in val["sources"].items()}}
    if val["is_best"]:
        cfg = learner.cfg
        path = save_best(learner, Path(cfg.output_dir) / cfg.name / BEST_DIR, step, rank,
                         val, config["model_path"])
        if rank == 0 and tracker is not None:
            tracker.set_tags({"best_step": step, "best_val_score": f"{val['score']:.4f}",
                              "best_policy": str(path)})
    out["val/best_score"] = val["best_score"]
    if rank == 0:
        srcs = ", ".join(f"{k} {v:.3f}" for k, v in val["sources"].items())
        say(f"[validation] step {step}: {val['score']:.3f} ({srcs})"
            + (" - best so far, policy kept" if val["is_best"] else ""))
    return out


def save_policy(learner: Learner, folder: Path, rank: int, model_path: str) -> None:
    """Rank 0 writes the policy in HF format with its tokenizer (loadable by from_pretrained;
    model_path may be a local dir or a hub id); every rank must call it (under ZeRO-3 each
    holds a part of the weights)."""
    with learner.gathered():
        if rank == 0:
            learner.engine.module.save_pretrained(folder)
    if rank == 0:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(model_path).save_pretrained(folder)


def save_best(learner: Learner, best: Path, step: int, rank: int, val: dict,
              model_path: str) -> Path:
    """The policy of ``step`` (HF format, with its tokenizer) as ``best``/policy, with
    best/meta.json saying which step and validation it is; written beside and then renamed
    over the previous best, so a crash never leaves a half-written best."""
    tmp = best.with_name(best.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    save_policy(learner, tmp / "policy", rank, model_path)
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps(
            {"step": step, "score": val["score"], "sources": val["sources"]}, indent=1))
        old = best.with_name(best.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if best.exists():
            best.rename(old)
        tmp.rename(best)
        shutil.rmtree(old, ignore_errors=True)
    return best / "policy"


def save_checkpoint(learner: Learner, scheduler, step: int, rank: int, world: int,
                    config: dict) -> str:
    """This rank's part of the checkpoint of ``step``, in a fresh folder (Ray Train merges the
    ranks' folders): DeepSpeed's checkpoint (each rank's fp32 master partition and optimizer
    states, relift_ray.checkpoint); rank 0 also the HF-format policy with its tokenizer (for
    evaluation and serving), the scheduler's whole state (JSON) and meta.json."""
    d = Path(tempfile.mkdtemp(prefix=f"relift-save-{rank}-"))
    save_learner(learner, d, rank, world)
    save_policy(learner, d / "policy", rank, config["model_path"])
    if rank == 0:
        state = call(scheduler, "state_dict")
        (d / SCHEDULER_STATE).write_text(json.dumps(state))
        (d / "meta.json").write_text(json.dumps({"step": step}))
    return str(d)


def progress_line(step: int, total: int, m: dict) -> str:
    b = "/".join(str(m.get(f"bucket_{k}", "-")) for k in ("easy", "medium", "hard", "hardest"))
    return (f"[step {step}/{total}] reward {m.get('reward_mean', float('nan')):.3f} | "
            f"buckets E/M/H/X {b} | buffer {m.get('buffer_size', 0)} | "
            f"sft steps {m.get('sft_steps', 0)} | demos {m.get('demos_used_unique', 0)} | "
            f"{m['step_seconds']:.2f}s")
