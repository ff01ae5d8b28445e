"""The learner's forward pass: samples as padded tensors, per-token log-probs and entropy
(optionally chunked over the vocabulary projection, optionally padding-free), and the
micro-batches a minibatch is split into under a token budget."""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from relift_ray.core.algo import token_logprobs
from relift_ray.records import Sample


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


def autocast(device: torch.device, dtype: str):
    """train.autocast: the forward's matrix products in ``dtype`` ("" = off); the log-probs
    and entropy are computed from fp32 logits either way (``token_logprobs``)."""
    return torch.autocast(device.type, dtype=getattr(torch, dtype or "bfloat16"),
                          enabled=bool(dtype))


def fit_width(x: torch.Tensor, width: int) -> torch.Tensor:
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
