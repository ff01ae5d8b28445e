"""The learner: one worker's model under DeepSpeed ZeRO, and its RL and SFT updates.

``Learner`` holds one worker's model and optimizer (``TwoPhaseAdamW``: the released
algorithm's two AdamW states, RL and SFT, over the same weights; with model.lora, PEFT's model
whose adapters alone train and are in the optimizer) and runs the updates: RL
(logp_old recomputed here, ``algo.minibatches`` optimizer steps), then SFT when the batch
carries one. The forward pass (log-probs, micro-batches, packing) is relift_ray.learner.forward;
the step every runner uses is relift_ray.learner.step; the Ray Train loop around it is
relift_ray.learner.loop. Usable without Ray Train in tests.
"""
from __future__ import annotations

import ctypes
from collections import defaultdict
from contextlib import contextmanager

import torch

from relift_ray.config import RunConfig
from relift_ray.core.algo import (
    logprob_mismatch,
    policy_loss,
    released_entropy_weights,
    released_sft_weights,
    sft_loss,
    tis_weights,
)
from relift_ray.data.lora import adapter_weights, merged_state_dict, wrap
from relift_ray.imports import import_deepspeed
from relift_ray.learner.forward import (
    autocast,
    check_packing,
    fit_width,
    forward_logprobs,
    microbatches,
    to_tensors,
)
from relift_ray.records import AdapterWeights, Sample


def release_freed_memory() -> bool:
    """Hand the heap pages this step freed back to the OS (glibc's ``malloc_trim``). A step's
    logits and activations are freed into glibc's arenas, which keep them: a SmolLM2 learner
    otherwise holds 5 GB between steps instead of 3.2, memory the generator beside it on the
    same machine needs. False where the C library has no ``malloc_trim`` (not glibc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


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


def _skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed's comm backend compiles (g++, about a minute on a fresh machine) and
    loads its shared-memory all-reduce op, which only its inference all-reduce uses; training
    reduces through the torch process group (gloo). Mark the op unavailable so neither
    happens."""
    # DeepSpeed: imported by import_deepspeed() before this runs
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
        deepspeed = import_deepspeed()
        # transformers: after skip_unused_modules() (relift_ray.imports)
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight load floods the job logs
        self.cfg, self.a, self.rank, self.world = cfg, cfg.algo, rank, world
        self.model_path = model_path
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
        self.lora = bool(cfg.model.lora.rank)
        if self.lora:  # base weights frozen; only the adapters train, and the optimizer holds
            model = wrap(model, cfg.model.lora, model_path)  # them alone
        if cfg.train.padding_free:
            check_packing(model)
        self.opt = TwoPhaseAdamW([p for p in model.parameters() if p.requires_grad], {
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
        release_freed_memory()
        return metrics

    def _logprobs(self, t: dict):
        with autocast(self.device, self.cfg.train.autocast):
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
        its own forward pass gives them (detached, ratio exactly 1) and keeps them for the
        sampler comparison (when the samples carry the sampler's log-probs). With one
        minibatch (the default) there is no extra pass at all."""
        mixed_sft = mixed_sft or []
        k = self.a.minibatches
        lengths = [len(x.prompt_ids) + len(x.response_ids) for x in samples]
        chunks = [c.tolist() for c in torch.arange(len(samples)).chunk(k)]
        blp = all(len(x.behavior_logprobs) == len(x.response_ids) > 0 for x in samples)
        old: dict[int, torch.Tensor] = {}  # row -> its old log-probs
        need = [i for c in chunks[1:] for i in c]
        with torch.no_grad(), self._without_dropout():
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
                    loss, m = self._rl_share(samples, mrows, old, j == 0, n_tok,
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
            lp = torch.stack([fit_width(old[i][None], t["mask"].shape[1])[0]
                              for i in range(len(samples))])
            mm = logprob_mismatch(lp, t["blp"], t["mask"])
            out.update({f"mismatch/{key}": v for key, v in mm.items()})
        return dict(out)

    @contextmanager
    def _without_dropout(self):
        """The old policy's log-probs as the generators compute them: without LoRA's dropout
        (the models we train have no other), so that no random mask enters the ratio."""
        module = self.engine.module
        if not (self.lora and self.cfg.model.lora.dropout):
            yield
            return
        module.eval()
        try:
            yield
        finally:
            module.train()

    def _tensors(self, samples: list[Sample]) -> dict:
        return to_tensors(samples, self.pad_id, self.device)

    def _rl_share(self, samples, rows, old, own_old: bool, n_tok: int, n_seq: int,
                  ent_w: dict | None = None):
        """One RL micro-batch's loss: its share of its minibatch's."""
        t = self._tensors([samples[i] for i in rows])
        logp, ent = self._logprobs(t)
        width = logp.shape[1]
        if own_old:  # the first minibatch: trained before any update, its own are the old
            lp_old = logp.detach()
            old.update(zip(rows, lp_old))
        else:
            lp_old = torch.stack([fit_width(old[i][None], width)[0] for i in rows])
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
        # DeepSpeed: imported by import_deepspeed() when the engine was built
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()),
                                                 enabled=self.cfg.train.zero_stage == 3)

    def full_state_dict(self) -> dict:
        """CPU copy of the full weights by the model's own names; a LoRA run's with the
        adapters merged in (all ranks must call under ZeRO-3)."""
        with self.gathered():
            if self.lora:
                return merged_state_dict(self.engine.module)
            return {k: v.detach().to("cpu", copy=True)
                    for k, v in self.engine.module.state_dict().items()}

    def adapter_weights(self) -> AdapterWeights:
        """A LoRA run's adapters (CPU copies, PEFT's names, with their settings); under ZeRO-3
        all ranks must call (only the adapters are gathered)."""
        # DeepSpeed: imported by import_deepspeed() when the engine was built
        import deepspeed
        trained = [p for p in self.engine.module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trained,
                                               enabled=self.cfg.train.zero_stage == 3):
            return adapter_weights(self.engine.module)

    def sync_weights(self) -> dict | AdapterWeights:
        """What a weight sync sends: the adapters alone (model.lora.sync=adapter), else the
        full weights (merged, in a LoRA run). All ranks must call under ZeRO-3."""
        if self.lora and self.cfg.model.lora.sync == "adapter":
            return self.adapter_weights()
        return self.full_state_dict()


# ------------------------------------------------------------------ the step and the loops


