"""Advantages and losses of ReLIFT, pure torch (no Ray, no DeepSpeed).

Shapes: B sequences of T response positions; ``mask`` is 1 on response tokens, 0 on padding.

- ``group_advantages``: A_ij = r_ij - mean_j r_ij (ReLIFT, Dr.GRPO style) or divided by the
  group's std as well (clipped-GRPO baseline).
- ``policy_loss``: the released ReLIFT loss  sum_tokens(-A * ratio) / L_max - c * mean entropy
  (no clipping, no KL); the released RL baseline's (``clipped``: the same with the PPO ratio
  clip); or the clipped-GRPO loss with a per-sequence token mean.
- ``sft_loss``: token-mean cross-entropy on the demonstration - alpha * mean entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_advantages(rewards: torch.Tensor, normalize_std: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards [G, N] (G questions, N rollouts each) -> advantages [G, N]."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if normalize_std:
        # unbiased std, as GRPO implementations use; eps keeps all-equal groups at 0
        centered = centered / (rewards.std(dim=1, keepdim=True) + eps)
    return centered


def token_logprobs(logits: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, T, V] predicting targets [B, T] -> (log p(target) [B, T], entropy [B, T])."""
    logits = logits.float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, entropy: torch.Tensor, *, kind: str = "relift",
                l_max: int = 8192, clip_eps: float = 0.2,
                entropy_coef: float = 0.001,
                is_weight: torch.Tensor | None = None,
                n_tokens: float | None = None, n_seqs: int | None = None,
                entropy_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """RL loss of one (mini)batch. advantages [B] (one per sequence), the rest [B, T].

    ``is_weight`` [B, T] (no gradient): the importance-sampling correction for the sampler /
    learner mismatch (``tis_weights``); each token's policy-gradient term is multiplied by it.
    ``n_tokens`` / ``n_seqs``: the response tokens / sequences of the whole minibatch when
    these rows are one micro-batch of it (default: these rows'); the loss and every figure
    returned are then this micro-batch's share, and the shares add up to the minibatch's.
    ``entropy_weight`` [B]: each row's weight per token in the entropy term instead of
    1 / n_tokens (algo.entropy_agg=released: ``released_entropy_weights``); the reported
    ``entropy`` stays the token mean.
    """
    mask = mask.float()
    n_tokens = max(float(mask.sum() if n_tokens is None else n_tokens), 1.0)
    n_seqs = max(len(advantages) if n_seqs is None else n_seqs, 1)
    ratio = torch.exp(logp - logp_old)
    if is_weight is not None:
        ratio = ratio * is_weight.detach()
    adv = advantages.unsqueeze(-1)
    if kind == "relift":
        pg = -(adv * ratio * mask).sum() / l_max
        clip_frac = torch.zeros(())
    elif kind in ("clipped", "grpo"):
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)
        per_token = torch.maximum(unclipped, clipped)
        if kind == "clipped":  # the sum over tokens / L_max, as the relift loss
            pg = (per_token * mask).sum() / l_max
        else:  # a token mean per sequence, averaged over the sequences
            pg = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / n_seqs
        clip_frac = ((clipped > unclipped).float() * mask).sum() / n_tokens
    else:
        raise ValueError(f"unknown RL loss kind {kind!r} (relift | clipped | grpo)")
    ent = (entropy * mask).sum() / n_tokens
    ent_term = ent if entropy_weight is None else \
        (entropy * mask * entropy_weight.unsqueeze(-1)).sum()
    loss = pg - entropy_coef * ent_term
    return loss, {"pg_loss": pg.detach().item(), "entropy": ent.detach().item(),
                  "ratio_mean": ((ratio * mask).sum() / n_tokens).detach().item(),
                  "clip_frac": float(clip_frac)}


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, entropy: torch.Tensor,
             alpha: float = 0.001, n_tokens: float | None = None,
             token_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Token-mean NLL over demonstration tokens minus alpha * token-mean entropy
    (``n_tokens``: the whole batch's demonstration tokens, for one micro-batch's share).
    ``token_weight`` [B]: each row's weight per token in the loss instead of 1 / n_tokens
    (algo.sft_agg=released: ``released_sft_weights``); the reported figures stay token
    means."""
    mask = mask.float()
    n = max(float(mask.sum() if n_tokens is None else n_tokens), 1.0)
    nll, ent = (-logp * mask).sum() / n, (entropy * mask).sum() / n
    if token_weight is None:
        loss = nll - alpha * ent
    else:
        loss = ((-logp - alpha * entropy) * mask * token_weight.unsqueeze(-1)).sum()
    return loss, {"sft_nll": nll.detach().item(), "sft_entropy": ent.detach().item()}


# ------------------------------------------------------------ the released code's aggregation
# The released trainer (a verl fork) sends each rank's minibatch through the model in dynamic
# micro-batches of at most ppo_max_token_len_per_gpu (32,768) tokens and adds up the
# micro-batches' losses. Its policy-gradient term is a sum over tokens / L_max, so the
# split does not change it; its entropy term is each micro-batch's token mean, so the
# entropy bonus is counted once per micro-batch: its effective coefficient grows with the
# number of micro-batches (the paper's formula counts it once per minibatch). Its SFT step
# likewise adds micro-batch token means (micro-batches of sft_micro_batch_size rows), each
# divided by the number of micro-batches in the whole SFT batch (sft_mini_batch_size /
# sft_micro_batch_size). Both are written here as a weight per row on each token.

def released_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """The released code's dynamic micro-batches of one rank's minibatch (row indices):
    ceil(total tokens / budget) of them (at most one per row), rows balanced by their
    tokens, longest first into the lightest group (the released code balances with
    Karmarkar-Karp; the number of groups, which sets the entropy weight, is the same)."""
    if not lengths:
        return []
    k = min(len(lengths), max(1, -(-sum(lengths) // budget)))
    groups: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        g = min(range(k), key=lambda j: (load[j], j))
        groups[g].append(i)
        load[g] += lengths[i]
    return [sorted(g) for g in groups]


def released_entropy_weights(lengths: list[int], response_lengths: list[int],
                             budget: int) -> torch.Tensor:
    """[B] per-token entropy weights of algo.entropy_agg=released: 1 / (response tokens of
    the row's micro-batch), so the entropy term is the sum of micro-batch token means."""
    w = torch.zeros(len(lengths))
    for g in released_groups(lengths, budget):
        n = max(sum(response_lengths[i] for i in g), 1)
        w[g] = 1.0 / n
    return w


def released_sft_weights(response_lengths: list[int], micro: int,
                         batch_rows: int) -> torch.Tensor:
    """[B] per-token SFT loss weights of algo.sft_agg=released: consecutive micro-batches of
    ``micro`` rows, each its token mean divided by batch_rows / micro (the released code's
    sft_mini_batch_size / sft_micro_batch_size, with the whole SFT batch as the minibatch)."""
    w = torch.zeros(len(response_lengths))
    per = max(batch_rows / micro, 1.0)
    for a in range(0, len(response_lengths), micro):
        n = max(sum(response_lengths[a:a + micro]), 1)
        w[a:a + micro] = 1.0 / (n * per)
    return w


def tis_weights(logp_old: torch.Tensor, behavior_logp: torch.Tensor, mask: torch.Tensor,
                cap: float = 2.0, kind: str = "tis") -> torch.Tensor:
    """Importance weights w = pi_learner(t) / pi_sampler(t) per token, bounded.

    The sampler and the learner give the same tokens different probabilities: vLLM's bf16
    kernels slightly, and weights ``algo.max_staleness`` versions old (asynchronous rollouts)
    more; the RL gradient assumes the learner's. ``tis`` (truncated IS) uses min(w, cap);
    ``clip`` clips w into [1/cap, cap] (it also bounds how far a token the learner now finds
    unlikely is discounted). Padding positions get 1.
    """
    w = torch.exp(logp_old - behavior_logp)
    w = w.clamp(max=cap) if kind == "tis" else w.clamp(min=1 / cap, max=cap)
    return torch.where(mask.bool(), w, torch.ones_like(w))


def logprob_mismatch(learner_logp: torch.Tensor, sampler_logp: torch.Tensor,
                     mask: torch.Tensor) -> dict:
    """How far the sampler's log-probs of the sampled tokens are from the learner's.

    Returns mean and max |difference| per token, the token-mean of the probability ratio
    exp(learner - sampler) and the largest per-sequence |sum of differences| (the log of that
    sequence's importance ratio).
    """
    m = mask.float()
    d = (learner_logp - sampler_logp) * m
    return {"logprob_abs_diff_mean": float(masked_mean(d.abs(), m)),
            "logprob_abs_diff_max": float(d.abs().max()) if m.any() else 0.0,
            "prob_ratio_mean": float(masked_mean(torch.exp(d), m)),
            "seq_log_ratio_abs_max": float(d.sum(-1).abs().max()) if m.any() else 0.0,
            "tokens": int(m.sum())}
