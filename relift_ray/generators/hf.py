"""The transformers generator backend (CPU or GPU): ``model.generate`` with sampling.

Weights arrive as a state dict from the object store (the learner puts it once; every
generator loads the same object).
"""
from __future__ import annotations

import torch

from relift_ray.records import Completion, Question, SamplingParams


class HFGenerator:
    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32",
                 max_batch: int = 256, threads: int = 0, eos_token: str = ""):
        from relift_ray.imports import skip_unused_modules
        skip_unused_modules()
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
        self.weight_version = 0
        self.tokens_generated = 0

    def get_version(self) -> int:
        return self.weight_version

    def load_weights(self, version: int, state_dict: dict) -> int:
        self.model.load_state_dict(state_dict, strict=True)
        self.weight_version = version
        return version

    def load_base(self) -> int:
        """The base model's weights again, read from its folder: version 0."""
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.model.dtype)
        return self.load_weights(0, base.state_dict())

    @torch.no_grad()
    def sample(self, prompts: list[str], params: SamplingParams, streamer=None,
               logits: bool | None = None, stop_strings: list[str] | None = None):
        """One ``model.generate`` call: (the tokenized prompts, its output with ``sequences``
        and, when ``logits`` (default params.logprobs), the raw ``logits`` of each step).
        The RNG is not seeded here (``generate`` seeds it once per call). ``stop_strings``
        end a row's generation once its text contains one (the caller cuts the text)."""
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True,
                  add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        res = self.model.generate(
            **enc, do_sample=sample, num_return_sequences=params.n,
            max_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
            output_logits=params.logprobs if logits is None else logits, streamer=streamer,
            **({"stopping_criteria": _stop_on(tok, stop_strings, enc["input_ids"].shape[1])}
               if stop_strings else {}),
            **({"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
               if sample else {}))
        return enc, res

    @torch.no_grad()
    def generate(self, questions: list[Question], params: SamplingParams) -> list[list[Completion]]:
        tok = self.tokenizer
        out: list[list[Completion]] = []
        torch.manual_seed(params.seed)
        per_call = max(1, self.max_batch // params.n)
        for start in range(0, len(questions), per_call):
            chunk = questions[start:start + per_call]
            enc, res = self.sample([q.prompt for q in chunk], params)
            gen = res.sequences
            width = enc["input_ids"].shape[1]
            lp = None
            if params.logprobs:  # the model's own log-probs of the sampled tokens (raw logits,
                # as the learner computes them), [rows, new tokens]
                logits = torch.stack(res.logits, dim=1).float()
                lp = torch.log_softmax(logits, -1).gather(
                    -1, gen[:, width:width + logits.shape[1]].unsqueeze(-1)).squeeze(-1)
            for i, q in enumerate(chunk):
                prompt = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
                group = []
                for j in range(params.n):
                    row = i * params.n + j
                    resp = _trim(gen[row, width:].tolist(), tok.eos_token_id, tok.pad_token_id)
                    self.tokens_generated += len(resp)
                    group.append(Completion(
                        question_id=q.id, prompt_ids=tuple(prompt), response_ids=tuple(resp),
                        text=tok.decode(resp, skip_special_tokens=True),
                        weight_version=self.weight_version,
                        logprobs=tuple(lp[row, :len(resp)].tolist()) if lp is not None else ()))
                out.append(group)
        return out


def _stop_on(tok, stops: list[str], width: int):
    """A stopping criterion: a row is done once the text it generated contains a stop string
    (only the last few tokens are decoded each step, enough to hold the longest one)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    tail = 4 * max(map(len, stops)) + 8

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, width:][:, -tail:]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts],
                                dtype=torch.bool, device=input_ids.device)
    return StoppingCriteriaList([StopOnStrings()])


def _trim(ids: list[int], eos: int, pad: int) -> list[int]:
    """Cut at the first EOS (kept, it is a sampled token); drop right padding otherwise."""
    if eos in ids:
        return ids[:ids.index(eos) + 1]
    while ids and ids[-1] == pad and pad != eos:
        ids.pop()
    return ids
