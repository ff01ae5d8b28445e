"""The transformers generator backend (CPU or GPU).

Rollouts (``generate``) come from our own decode loop, ``decode``: a prefill, then one forward
pass per new token over the rows still going, with the KV cache shrunk to them as rows end.
On a small model a decode step costs mostly per-call overhead, and one long response kept every
row of the batch stepping in ``model.generate``; here a step costs what its live rows cost.
Serving (streaming, stop strings) and the greedy test profile use ``model.generate``
(``sample``).

Weights arrive as a state dict from the object store (the learner puts it once; every
generator loads the same object), or in a LoRA run as the adapters alone, loaded into PEFT's
model around the base.
"""
from __future__ import annotations

import inspect

import torch

from relift_ray.data.lora import apply_adapter
from relift_ray.imports import skip_unused_modules
from relift_ray.records import AdapterWeights, Completion, Question, SamplingParams


class HFGenerator:
    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32",
                 max_batch: int = 256, threads: int = 0, eos_token: str = ""):
        skip_unused_modules()
        # transformers: after skip_unused_modules() (relift_ray.imports)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight load floods the job logs
        if threads:
            torch.set_num_threads(threads)
        self.device, self.model_path = device, model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # generation continues from the prompt's end
        if eos_token:  # e.g. <|eot_id|> for a chat template that ends turns with it
            self.tokenizer.eos_token = eos_token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.max_batch = max_batch
        params = inspect.signature(self.model.forward).parameters
        self._keep_last = "logits_to_keep" in params  # prefill: logits of the last position only
        self._positions = "position_ids" in params
        self.weight_version = 0
        self.tokens_generated = 0

    def get_version(self) -> int:
        return self.weight_version

    def load_weights(self, version: int, state_dict: dict | AdapterWeights) -> int:
        """A state dict (the whole model), or a LoRA run's adapters: loaded into PEFT's
        model around the base this generator started with."""
        if isinstance(state_dict, AdapterWeights):
            self.model = apply_adapter(self.model, state_dict)
        else:
            self._unwrap()
            self.model.load_state_dict(state_dict, strict=True)
        self.weight_version = version
        return version

    def _unwrap(self) -> None:
        """Back to the plain model (dropping the adapters) if a LoRA sync wrapped it."""
        if hasattr(self.model, "peft_config"):
            self.model = self.model.unload()

    def load_base(self) -> int:
        """The base model's weights again, read from its folder: version 0."""
        # transformers: imported by __init__, after skip_unused_modules()
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.model.dtype)
        return self.load_weights(0, base.state_dict())

    def _encode(self, prompts: list[str]):
        """The prompts as one left-padded batch on this generator's device."""
        return self.tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(self.device)

    @torch.no_grad()
    def sample(self, prompts: list[str], params: SamplingParams, streamer=None,
               logits: bool | None = None, stopping=None, min_new_tokens: int = 0):
        """One ``model.generate`` call: (the tokenized prompts, its output with ``sequences``
        and, when ``logits`` (default params.logprobs), the raw ``logits`` of each step).
        The RNG is not seeded here (``generate`` seeds it once per call). ``stopping``: a
        ``StoppingCriteria`` called after every token, which ends rows (serving: stop
        strings, requests whose client left); ``min_new_tokens`` holds EOS back that long."""
        # transformers: imported by __init__, after skip_unused_modules()
        from transformers import StoppingCriteriaList
        tok = self.tokenizer
        enc = self._encode(prompts)
        sample = params.temperature > 0
        res = self.model.generate(
            **enc, do_sample=sample, num_return_sequences=params.n,
            max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
            output_logits=params.logprobs if logits is None else logits, streamer=streamer,
            **({"stopping_criteria": StoppingCriteriaList([stopping])} if stopping else {}),
            **({"min_new_tokens": min_new_tokens} if min_new_tokens else {}),
            **({"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
               if sample else {}))
        return enc, res

    @torch.inference_mode()
    def generate(self, questions: list[Question], params: SamplingParams) -> list[list[Completion]]:
        tok = self.tokenizer
        out: list[list[Completion]] = []
        torch.manual_seed(params.seed)
        per_call = max(1, self.max_batch // params.n)
        for start in range(0, len(questions), per_call):
            chunk = questions[start:start + per_call]
            enc = self._encode([q.prompt for q in chunk])
            gen, lp, lengths = self.decode(enc["input_ids"], enc["attention_mask"], params)
            gen, lengths = gen.tolist(), lengths.tolist()
            for i, q in enumerate(chunk):
                prompt = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
                group = []
                for j in range(params.n):
                    row = i * params.n + j
                    resp = gen[row][:lengths[row]]
                    self.tokens_generated += len(resp)
                    group.append(Completion(
                        question_id=q.id, prompt_ids=tuple(prompt), response_ids=tuple(resp),
                        text=tok.decode(resp, skip_special_tokens=True),
                        weight_version=self.weight_version,
                        logprobs=tuple(lp[row, :len(resp)].tolist()) if lp is not None else ()))
                out.append(group)
        return out

    # one function (~70 lines) on purpose: the per-token loop keeps its state in locals, and
    # each helper call would run once per generated token
    @torch.inference_mode()
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               params: SamplingParams):
        """``params.n`` responses to each left-padded prompt row, sampled from the global RNG
        (seed it first): (tokens [rows * n, T], their log-probs [rows * n, T] or None, lengths
        [rows * n]). Row ``i * n + j`` is prompt ``i``'s ``j``-th response; a response ends
        with its EOS (kept) or at ``max_new_tokens``; tokens past a row's length are padding.

        Sampling is ``model.generate``'s: logits / temperature, the nucleus (top_p), one draw
        from the softmax; temperature 0 is greedy. Nothing else from the model's
        generation_config.json applies (repetition_penalty, min_p, ...): rollouts sample the
        policy the learner trains. The log-probs are of the raw logits (no temperature), as
        the learner computes them. Rows leave the KV cache as they end where every cache layer
        is a plain key/value one (``_can_drop_rows``); elsewhere (linear-attention and hybrid
        models) ended rows keep stepping, on padding."""
        n, limit = params.n, params.max_new_tokens
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        cache = _new_cache(self.model)
        # The prompt is read once and its keys and values copied to its n rows, where every
        # cache layer is a plain key/value one; elsewhere each of the n rows reads it (the
        # prompt is most of a short rollout's tokens: reading it n times was most of the work)
        once = n > 1 and _can_drop_rows(cache)
        ids, mask = (input_ids, attention_mask) if once else \
            (input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from 0
        kw = {"logits_to_keep": 1} if self._keep_last else {}
        if self._positions:
            kw["position_ids"] = pos
        logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                            use_cache=True, **kw).logits[:, -1].float()
        if once:
            cache.batch_repeat_interleave(n)
            logits, mask, pos = (x.repeat_interleave(n, 0) for x in (logits, mask, pos))
        rows = mask.shape[0]
        out = torch.full((rows, limit), pad, dtype=torch.long, device=mask.device)
        lps = torch.zeros((rows, limit), device=mask.device) if params.logprobs else None
        lengths = torch.full((rows,), limit, dtype=torch.long, device=mask.device)
        live = torch.arange(rows, device=mask.device)  # the rows still generating
        nxt_pos = pos[:, -1:] + 1
        shrink = _can_drop_rows(cache)
        for t in range(limit):
            token = _draw(logits, params)
            out[live, t] = token
            if lps is not None:
                lps[live, t] = torch.log_softmax(logits, -1).gather(
                    -1, token[:, None]).squeeze(-1)
            ended = (token == eos) & (lengths[live] == limit)  # (never set: limit)
            if ended.any():
                lengths[live[ended]] = t + 1
            if t == limit - 1:
                break
            if shrink and ended.any():
                keep = (~ended).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                live, token, mask, nxt_pos = live[keep], token[keep], mask[keep], nxt_pos[keep]
                cache.batch_select_indices(keep)
            elif not shrink:  # a cache that cannot drop rows: ended rows step on EOS/pad
                if (lengths[live] <= t + 1).all():
                    break
                token = torch.where(lengths[live] <= t + 1, torch.full_like(token, pad), token)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            kw = {"position_ids": nxt_pos} if self._positions else {}
            logits = self.model(input_ids=token[:, None], attention_mask=mask,
                                past_key_values=cache, use_cache=True, **kw).logits[:, -1].float()
            nxt_pos = nxt_pos + 1
        if not shrink:  # rows that stepped past their EOS hold what they sampled there
            beyond = torch.arange(limit, device=out.device)[None] >= lengths[:, None]
            out[beyond] = pad
            if lps is not None:
                lps[beyond] = 0.0
        return out, lps, lengths


# cache layers that hold only keys and values per row, so dropping rows is slicing them; a
# recurrent or convolution state (linear-attention and hybrid layers) is not dropped by
# batch_select_indices, and a static or quantized layer cannot be sliced
_ROW_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")


def _can_drop_rows(cache) -> bool:
    """Whether ended rows can leave this cache, and rows be copied in it: a DynamicCache whose
    every layer is a plain key/value one (a cache made from the model's config has its layers
    before it is filled). Otherwise ended rows keep stepping, on padding."""
    layers = getattr(cache, "layers", None)
    return (hasattr(cache, "batch_select_indices") and bool(layers)
            and all(type(layer).__name__ in _ROW_LAYERS for layer in layers))


def _new_cache(model):
    # transformers: imported by HFGenerator.__init__, after skip_unused_modules()
    from transformers import DynamicCache
    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def _draw(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else a draw from softmax(logits / T) over
    the nucleus (the smallest set of top tokens whose probability reaches top_p)."""
    if params.temperature <= 0:
        return logits.argmax(-1)
    scores = logits / params.temperature
    if params.top_p < 1.0:
        sorted_scores, order = scores.sort(-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum <= 1 - params.top_p  # the low tail whose mass is 1 - top_p at most
        drop[..., -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)


def trim_ids(ids: list[int], eos: int, pad: int) -> list[int]:
    """Cut at the first EOS (kept, it is a sampled token); drop right padding otherwise."""
    if eos in ids:
        return ids[:ids.index(eos) + 1]
    while ids and ids[-1] == pad and pad != eos:
        ids.pop()
    return ids
