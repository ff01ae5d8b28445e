"""The serving engine: a transformers generator answering OpenAI-style requests.

``TextEngine`` runs a ``Job`` (the prompts of one request, or of concurrent requests that
share one batch key, with their sampling settings) on ``HFGenerator`` and returns
``Choice``s: text, token ids, log-probs (and the top alternatives), finish reason; stops are
cut, and ``stream`` hands out text as it is generated. Each row's text is decoded
incrementally and scanned for stop strings only where it grew (``TextTail``: linear in the
text's length), and a row ends at the next token once its request is cancelled (``Job.cancel``:
its client left or its time ran out; ``Rows``). No Ray and no HTTP here: the Serve deployment
(relift_ray.jobs.serve) calls it; tests use it directly.
"""
from __future__ import annotations

import copy
import random
import threading
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from relift_ray.records import SamplingParams
from relift_ray.rollout.hf import HFGenerator, trim_ids

MAX_TOP_LOGPROBS = 20


class RequestError(ValueError):
    """A request the server does not serve: ``status`` (HTTP), ``param`` (the field, or
    None), ``code`` (OpenAI's error code, or None), ``headers`` (e.g. Retry-After)."""

    def __init__(self, message: str, param: str | None, status: int = 400,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.code, self.headers = param, status, code, headers or {}


@dataclass
class Job:
    """One request as the engine sees it."""
    prompts: list[str]
    params: SamplingParams
    top: int | None = None  # alternatives per token when log-probs are asked for
    stops: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # generate max_new_tokens whatever the model says (benchmarks)
    # set by the server when the client left or the request's time ran out: the job's rows
    # end at their next token
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def batch_key(self):
        """Requests with equal keys may share a generate call (None: run alone)."""
        p = self.params
        if p.temperature > 0 and p.seed >= 0:
            return None  # seeded sampling: reproducible only alone
        return (p.n, p.temperature, p.top_p, p.max_new_tokens, self.top is not None,
                tuple(self.stops), self.ignore_eos)


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


def first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class TextTail:
    """One row's text as its tokens arrive, decoded a few tokens at a time (the window since
    the last piece of text, not the whole text at each token), and the first stop string in
    it, searched in the new text and the overlap a stop could straddle: linear in the text."""

    def __init__(self, tok, stops: list[str]):
        self.tok, self.stops = tok, stops
        self.longest = max(map(len, stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.ends: list[int] = []  # len(text) after each token
        self.stop_at: int | None = None  # where the first stop string begins
        self._prefix = self._read = 0  # token offsets of the last decoded piece

    def add(self, token: int) -> None:
        self.ids.append(token)
        dec = self.tok.decode
        before = dec(self.ids[self._prefix:self._read], skip_special_tokens=True)
        now = dec(self.ids[self._prefix:], skip_special_tokens=True)
        # a piece that ends mid-character waits for the token that completes it
        if len(now) > len(before) and not now.endswith("\ufffd"):
            grown = len(self.text)
            self.text += now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
            if self.stops and self.stop_at is None:
                start = max(0, grown - self.longest + 1)
                cut = first_stop(self.text[start:], self.stops)
                self.stop_at = None if cut is None else start + cut
        self.ends.append(len(self.text))

    def safe(self) -> int:
        """How much of the text is settled: up to the stop string, else all but a tail that
        could still begin one."""
        if self.stop_at is not None:
            return self.stop_at
        text = self.text
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])),
                   default=0)
        return len(text) - hold


class Rows(StoppingCriteria):
    """Called by ``model.generate`` after each token: every row's text (``TextTail``) when
    it streams or has stop strings, ``emit(row, delta)`` of its settled text, and which rows
    are done: EOS, a stop string, or a cancelled job. generate ends when every row is done,
    so a call whose requests are all gone stops at the next token."""

    def __init__(self, tok, jobs: list[Job], emit=None):
        self.eos, self.emit = tok.eos_token_id, emit
        self.job = [j for j in jobs for _ in j.prompts for _ in range(j.params.n)]
        self.tails = [TextTail(tok, j.stops) for j in self.job]
        self.text = [emit is not None or bool(j.stops) for j in self.job]
        self.done = [False] * len(self.job)
        self.sent = [0] * len(self.job)

    def __call__(self, input_ids, scores, **kwargs):
        for r, t in enumerate(input_ids[:, -1].tolist()):
            if self.done[r]:
                continue
            if self.job[r].cancelled.is_set() or t == self.eos:
                self.done[r] = True
                continue
            if not self.text[r]:
                continue
            tail = self.tails[r]
            tail.add(t)
            self.flush(r, tail.safe())
            self.done[r] = tail.stop_at is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def flush(self, r: int, upto: int, text: str | None = None) -> None:
        text = self.tails[r].text if text is None else text
        if self.emit is not None and upto > self.sent[r]:
            self.emit(r, text[self.sent[r]:upto])
            self.sent[r] = upto

    def live(self) -> tuple[int, int]:
        """(jobs still generating, those of them cancelled)."""
        jobs = {id(j): j for j, d in zip(self.job, self.done) if not d}.values()
        return len(jobs), sum(j.cancelled.is_set() for j in jobs)


class TextEngine:
    """Generation for the API on an ``HFGenerator``: stop strings, log-probs with the top
    alternatives, token streams, cancellation. Usable without Ray (tests, benchmarks)."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32",
                 threads: int = 0):
        self.gen = HFGenerator(model_path, device=device, dtype=dtype, threads=threads)
        self.tok = self.gen.tokenizer
        # prompts are counted on the server's event loop while a generate call encodes in a
        # thread: a fast tokenizer keeps its padding setting in the object, which each encode
        # sets, so the two would race on one object (a batch left unpadded)
        self.counter = copy.deepcopy(self.tok)
        self.lock = threading.Lock()  # one generate at a time
        # requests: jobs run; generate_calls: generate calls (batching shares them);
        # cancelled: jobs whose client left (or whose time ran out) before they ended
        self.stats = {"requests": 0, "generate_calls": 0, "cancelled": 0}
        self._rows: Rows | None = None  # those of the generate call under way
        cfg = self.gen.model.config
        # the context: prompt and completion together (a model without the field: unbounded)
        self.context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)

    def live(self) -> dict:
        """Jobs generating now, and those of them cancelled (0 but for a token's time)."""
        rows = self._rows
        running, left = rows.live() if rows is not None else (0, 0)
        return {"running": running, "running_cancelled": left}

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise RequestError("this model has no chat template: use /v1/completions with a "
                               "prompt", "messages")
        return self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=False)

    def prompt_lengths(self, prompts: list[str]) -> list[int]:
        return [len(self.counter(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    def prompt_tokens(self, prompts: list[str]) -> int:
        return sum(self.prompt_lengths(prompts))

    def _generate(self, jobs: list[Job], logits: bool, emit=None):
        """One generate call for ``jobs`` (equal batch keys): (encoding, output), or None
        when every job was cancelled before its turn."""
        params = jobs[0].params
        seed = request_seed(None if params.seed < 0 else params.seed)
        prompts = [p for j in jobs for p in j.prompts]
        with self.lock:
            if all(j.cancelled.is_set() for j in jobs):  # gone while waiting for the lock
                self.stats["cancelled"] += len(jobs)
                return None
            self.stats["requests"] += len(jobs)
            self.stats["generate_calls"] += 1
            self._rows = rows = Rows(self.tok, jobs, emit)
            try:
                torch.manual_seed(seed)
                enc, res = self.gen.sample(
                    prompts, params, logits=logits, stopping=rows,
                    min_new_tokens=params.max_new_tokens if jobs[0].ignore_eos else 0)
            finally:
                self._rows = None
                self.stats["cancelled"] += sum(j.cancelled.is_set() for j in jobs)
        return enc, res, rows

    def run(self, jobs: list[Job]) -> list[list[list[Choice]] | None]:
        """Jobs with equal ``batch_key`` in one generate call: per job, per prompt, n
        choices (None for a job cancelled before the call)."""
        first = jobs[0]
        out = self._generate(jobs, logits=first.top is not None)
        if out is None:
            return [None] * len(jobs)
        enc, res, _ = out
        width = enc["input_ids"].shape[1]
        lps = None
        if first.top is not None:
            lps = torch.log_softmax(torch.stack(res.logits, dim=1).float(), -1)
        out, k = [], 0
        for job in jobs:
            per_prompt = []
            for _ in job.prompts:
                group = []
                for _ in range(job.params.n):
                    ids = res.sequences[k, width:].tolist()
                    group.append(self._choice(ids, lps[k] if lps is not None else None,
                                              job))
                    k += 1
                per_prompt.append(group)
            out.append(per_prompt)
        return out

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
            tail = TextTail(self.tok, [])
            keep = len(ids)
            for n, t in enumerate(ids):
                tail.add(t)
                if tail.ends[-1] > cut:
                    keep = n
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
        """Generates ``job`` calling ``emit(row, text_delta)`` as each row's text grows
        (rows prompt-major; text that may start a stop string is held back until it cannot);
        returns the choices as ``run`` would ([] when cancelled before it started)."""
        out = self._generate([job], logits=False, emit=emit)
        if out is None:
            return []
        enc, res, rows = out
        width = enc["input_ids"].shape[1]
        choices = [self._choice(res.sequences[r, width:].tolist(), None, job)
                   for r in range(len(rows.job))]
        if not job.cancelled.is_set():
            for r, c in enumerate(choices):  # what was held back for a stop that never came
                rows.flush(r, len(c.text), c.text)
        return choices
