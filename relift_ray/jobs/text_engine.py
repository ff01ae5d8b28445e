"""The serving engine: a transformers generator answering OpenAI-style requests.

``TextEngine`` runs a ``Job`` (the prompts of one request, or of concurrent requests that
share one batch key, with their sampling settings) on ``HFGenerator`` and returns
``Choice``s: text, token ids, log-probs (and the top alternatives), finish reason; stops are
cut, and ``stream`` hands out text as it is generated. No Ray and no HTTP here: the Serve
deployment (relift_ray.jobs.serve) calls it; tests use it directly.
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import torch
from transformers.generation.streamers import BaseStreamer

from relift_ray.records import SamplingParams
from relift_ray.rollout.hf import HFGenerator, trim_ids

MAX_TOP_LOGPROBS = 20


class RequestError(ValueError):
    """A request the model cannot serve; ``param`` names the field."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass
class Job:
    """One request as the engine sees it."""
    prompts: list[str]
    params: SamplingParams
    top: int | None = None  # alternatives per token when log-probs are asked for
    stops: list[str] = field(default_factory=list)

    @property
    def batch_key(self):
        """Requests with equal keys may share a generate call (None: run alone)."""
        p = self.params
        if p.temperature > 0 and p.seed >= 0:
            return None  # seeded sampling: reproducible only alone
        return (p.n, p.temperature, p.top_p, p.max_new_tokens, self.top is not None,
                tuple(self.stops))


@dataclass
class Choice:
    token_ids: list[int]  # the tokens of ``text`` (an EOS that ended it is not among them)
    text: str
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    generated: int = 0  # tokens generated (usage), the EOS included


def request_seed(seed: int | None) -> int:
    return random.randrange(2 ** 31) if seed is None else seed


def stops_of(jobs: list[Job]) -> list[str]:
    """Stop strings that end generation early: only when every job of the call has the same
    (each row is cut at its own job's strings afterwards anyway)."""
    first = jobs[0].stops
    return first if first and all(j.stops == first for j in jobs) else []


def first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class TextEngine:
    """Generation for the API on an ``HFGenerator``: stop strings, log-probs with the top
    alternatives, token streams. Usable without Ray (tests, benchmarks)."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32",
                 threads: int = 0):
        self.gen = HFGenerator(model_path, device=device, dtype=dtype, threads=threads)
        self.tok = self.gen.tokenizer
        self.lock = threading.Lock()  # one generate at a time
        self.stats = {"requests": 0, "generate_calls": 0}

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise RequestError("this model has no chat template: use /v1/completions with a "
                               "prompt", "messages")
        return self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=False)

    def run(self, jobs: list[Job]) -> list[list[list[Choice]]]:
        """Jobs with equal ``batch_key`` in one generate call: per job, per prompt, n
        choices."""
        first = jobs[0]
        params = first.params
        seed = request_seed(None if params.seed < 0 else params.seed)
        prompts = [p for j in jobs for p in j.prompts]
        with self.lock:
            self.stats["requests"] += len(jobs)
            self.stats["generate_calls"] += 1
            torch.manual_seed(seed)
            enc, res = self.gen.sample(prompts, params, logits=first.top is not None,
                                       stop_strings=stops_of(jobs))
        width = enc["input_ids"].shape[1]
        lps = None
        if first.top is not None:
            lps = torch.log_softmax(torch.stack(res.logits, dim=1).float(), -1)
        out, k = [], 0
        for job in jobs:
            per_prompt = []
            for _ in job.prompts:
                group = []
                for _ in range(params.n):
                    ids = res.sequences[k, width:].tolist()
                    group.append(self._choice(ids, lps[k] if lps is not None else None,
                                              job))
                    k += 1
                per_prompt.append(group)
            out.append(per_prompt)
        return out

    def prompt_tokens(self, prompts: list[str]) -> int:
        return sum(len(self.tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)

    def _choice(self, ids: list[int], lp, job: Job) -> Choice:
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        ids = trim_ids(ids, eos, pad)
        finish = "stop" if ids and ids[-1] == eos else "length"
        generated = len(ids)
        if finish == "stop":
            ids = ids[:-1]
        text = self.tok.decode(ids, skip_special_tokens=True)
        cut = first_stop(text, job.stops)
        if cut is not None:  # a stop string: the text before it, the tokens that made it
            text, finish = text[:cut], "stop"
            keep = len(ids)
            for n in range(1, len(ids) + 1):
                if len(self.tok.decode(ids[:n], skip_special_tokens=True)) > cut:
                    keep = n - 1
                    break
            ids = ids[:keep]
            generated = len(ids)
        c = Choice(ids, text, finish, generated=generated)
        if lp is not None:
            c.logprobs = [float(lp[i, t]) for i, t in enumerate(ids)]
            if job.top:
                vals, idx = lp[:len(ids)].topk(job.top, dim=-1)
                c.top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, vals)]
        return c

    def stream(self, job: Job, emit) -> list[Choice]:
        """Generates ``job`` calling ``emit(row, text_delta)`` as each row's text
        grows (text that may start a stop string is held back until it cannot); returns the
        choices as ``run`` would."""

        engine, n = self, len(job.prompts) * job.params.n  # rows: prompt-major
        tokens = [[] for _ in range(n)]
        sent, done = [0] * n, [False] * n
        eos = self.tok.eos_token_id

        class Rows(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate passes the prompt first
                    self.first = False
                    return
                for row, t in enumerate(value.reshape(-1).tolist()):
                    if done[row]:
                        continue
                    if t == eos:
                        done[row] = True
                        continue
                    tokens[row].append(t)
                    engine._flush(row, tokens, sent, done, job.stops, emit)

            def end(self):
                pass

        seed = request_seed(None if job.params.seed < 0 else job.params.seed)
        with self.lock:
            self.stats["requests"] += 1
            self.stats["generate_calls"] += 1
            torch.manual_seed(seed)
            enc, res = self.gen.sample(job.prompts, job.params, streamer=Rows(),
                                       logits=False, stop_strings=job.stops)
        width = enc["input_ids"].shape[1]
        choices = [self._choice(res.sequences[r, width:].tolist(), None, job)
                   for r in range(n)]
        for r, c in enumerate(choices):  # what was held back for a stop that never came
            if len(c.text) > sent[r]:
                emit(r, c.text[sent[r]:])
                sent[r] = len(c.text)
        return choices

    def _flush(self, row, tokens, sent, done, stops, emit) -> None:
        text = self.tok.decode(tokens[row], skip_special_tokens=True)
        cut = first_stop(text, stops)
        if cut is not None:
            done[row] = True
            safe = cut
        else:  # hold back a tail that could be the start of a stop string
            hold = max((k for s in stops for k in range(1, len(s))
                        if text.endswith(s[:k])), default=0)
            safe = len(text) - hold
            if text.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = min(safe, len(text) - 1)
        if safe > sent[row]:
            emit(row, text[sent[row]:safe])
            sent[row] = safe


