"""Serving a model or checkpoint as an OpenAI-compatible API on Ray Serve.

    relift serve --model runs/ray_train/toy-relift            # CPU: the transformers deployment
    relift serve --model <checkpoint> --backend vllm --tp 1   # GPU: ray.serve.llm with vLLM

``--model`` takes what the evaluation job takes (an HF folder, a hub id, a checkpoint, or a
run's folder: its newest checkpoint). Both backends answer the same routes, and the official
``openai`` client works against them as it is:

    GET  /v1/models
    GET  /stats                 (transformers) this replica's requests and generate calls
    POST /v1/completions        prompt (a string or a list), max_tokens, temperature, top_p, n,
                                seed, stop, stream, logprobs (0-20 alternatives per token)
    POST /v1/chat/completions   messages (the model's chat template), max_tokens /
                                max_completion_tokens, temperature, top_p, n, seed, stop,
                                stream, logprobs, top_logprobs

The transformers deployment is a FastAPI app behind Ray Serve (``serve.ingress``): pydantic
validates the requests (a bad field gets a 400 in OpenAI's error shape naming it; the OpenAPI
page is at /docs), ``stream: true`` answers with server-sent events in OpenAI's chunk format,
token by token, and concurrent non-streaming requests share a ``model.generate`` call
(``serve.batch``, ``--batch-size``): greedy requests and unseeded sampled ones with the same
sampling settings are batched; a sampled request with a ``seed`` runs alone, so it returns
exactly what the generator returns for that seed. The vLLM backend is Ray Serve LLM's own
OpenAI app.
"""

import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relift_ray.records import SamplingParams

ROUTE = "/v1"
MAX_TOP_LOGPROBS = 20
CHAT_MAX_TOKENS = 1024  # a chat request without max_tokens (OpenAI's has no fixed limit)


class RequestError(ValueError):
    """A request the model cannot serve; ``param`` names the field."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


# ------------------------------------------------------------------ requests

# pydantic request models (module level: FastAPI resolves the routes' annotations here)

class Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI fields we do not use are ignored
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=64)
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or not all(stops):
            raise ValueError("at most 4 non-empty stop strings")
        return stops


class CompletionRequest(Common):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=1 << 20)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        prompts = [v] if isinstance(v, str) else v
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError("must be a non-empty string or a list of them")
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class ChatCompletionRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


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


def _seed(seed: int | None) -> int:
    return random.randrange(2 ** 31) if seed is None else seed


def to_job(req, prompts: list[str], max_tokens: int, top: int | None) -> Job:
    if req.n > 1 and req.temperature == 0:
        raise RequestError("n > 1 needs temperature > 0 (greedy decoding gives one answer)",
                           "n")
    return Job(prompts, SamplingParams(
        n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens,
        seed=req.seed if req.seed is not None else -1, logprobs=top is not None),
        top, list(req.stop or []))


# ------------------------------------------------------------------ the engine (no Ray)

class TextEngine:
    """Generation for the API on an ``HFGenerator``: stop strings, log-probs with the top
    alternatives, token streams. Usable without Ray (tests, benchmarks)."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32",
                 threads: int = 0):
        from relift_ray.generators.hf import HFGenerator
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
        import torch
        first = jobs[0]
        params = first.params
        seed = _seed(None if params.seed < 0 else params.seed)
        prompts = [p for j in jobs for p in j.prompts]
        with self.lock:
            self.stats["requests"] += len(jobs)
            self.stats["generate_calls"] += 1
            torch.manual_seed(seed)
            enc, res = self.gen.sample(prompts, params, logits=first.top is not None,
                                       stop_strings=_stops_of(jobs))
        width = enc["input_ids"].shape[1]
        lps = None
        if first.top is not None:
            lps = torch.log_softmax(torch.stack(res.logits, dim=1).float(), -1)
        rows, out, k = [], [], 0
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
        from relift_ray.generators.hf import _trim
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        ids = _trim(ids, eos, pad)
        finish = "stop" if ids and ids[-1] == eos else "length"
        generated = len(ids)
        if finish == "stop":
            ids = ids[:-1]
        text = self.tok.decode(ids, skip_special_tokens=True)
        cut = _first_stop(text, job.stops)
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
        import torch
        from transformers.generation.streamers import BaseStreamer

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

        seed = _seed(None if job.params.seed < 0 else job.params.seed)
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
        cut = _first_stop(text, stops)
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


def _stops_of(jobs: list[Job]) -> list[str]:
    """Stop strings that end generation early: only when every job of the call has the same
    (each row is cut at its own job's strings afterwards anyway)."""
    first = jobs[0].stops
    return first if first and all(j.stops == first for j in jobs) else []


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


# ------------------------------------------------------------------ OpenAI response shapes

def _completion_logprobs(engine: TextEngine, c: Choice) -> dict:
    toks = [engine.tok.decode([t]) for t in c.token_ids]
    offsets, pos = [], 0
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": toks, "token_logprobs": c.logprobs, "text_offset": offsets,
            "top_logprobs": [{engine.tok.decode([i]): v for i, v in alts} for alts in c.top]
            if c.top else None}


def _chat_logprobs(engine: TextEngine, c: Choice) -> dict:
    def entry(t, v):
        s = engine.tok.decode([t])
        return {"token": s, "logprob": v, "bytes": list(s.encode())}
    return {"content": [
        {**entry(t, v), "top_logprobs": [entry(i, a) for i, a in (c.top[k] if c.top else [])]}
        for k, (t, v) in enumerate(zip(c.token_ids, c.logprobs))]}


def completion_body(engine: TextEngine, name: str, job: Job, groups) -> dict:
    choices, used = [], 0
    for i, group in enumerate(groups):
        for j, c in enumerate(group):
            used += c.generated
            choices.append({"index": i * job.params.n + j, "text": c.text,
                            "logprobs": _completion_logprobs(engine, c)
                            if job.top is not None else None,
                            "finish_reason": c.finish_reason})
    prompt = engine.prompt_tokens(job.prompts)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": name, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": used,
                      "total_tokens": prompt + used}}


def chat_body(engine: TextEngine, name: str, job: Job, group) -> dict:
    used = sum(c.generated for c in group)
    prompt = engine.prompt_tokens(job.prompts)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": j, "message": {"role": "assistant", "content": c.text},
                         "logprobs": _chat_logprobs(engine, c) if job.top is not None
                         else None, "finish_reason": c.finish_reason}
                        for j, c in enumerate(group)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": used,
                      "total_tokens": prompt + used}}


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


# ------------------------------------------------------------------ the Serve deployment

def _app():
    """The FastAPI app of the transformers deployment (routes, validation, errors)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="relift_ray", description="OpenAI-compatible completions and chat "
                  "completions of a relift_ray model")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in err.get("loc", []) if x != "body"]
        param = loc[0] if loc else "body"
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", "body"
        return JSONResponse(error_body(f"{param}: {msg}", param), status_code=400)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError):
        return JSONResponse(error_body(str(exc), exc.param), status_code=exc.status)

    return app


def build_deployment(batch_size: int = 8, batch_wait_ms: float = 10.0):
    """The Serve deployment class of the transformers backend."""
    from fastapi.responses import StreamingResponse
    from ray import serve

    app = _app()

    @serve.deployment(name="relift-openai")
    @serve.ingress(app)
    class OpenAIServer:
        def __init__(self, model_path: str, model_name: str, device: str = "cpu",
                     dtype: str = "float32", threads: int = 0, batch: int = batch_size):
            self.engine = TextEngine(model_path, device, dtype, threads)
            self.name = model_name
            self._batched.set_max_batch_size(max(1, batch))
            self._batched.set_batch_wait_timeout_s(batch_wait_ms / 1000 if batch > 1 else 0)

        @serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=batch_wait_ms / 1000)
        async def _batched(self, jobs: list[Job]) -> list:
            """Concurrent requests: those with the same batch key share one generate call."""
            groups: dict = {}
            for i, job in enumerate(jobs):
                key = job.batch_key
                groups.setdefault(key if key is not None else ("alone", i), []).append(i)
            out: list = [None] * len(jobs)
            for idx in groups.values():
                try:
                    res = await asyncio.to_thread(self.engine.run, [jobs[i] for i in idx])
                except Exception as e:  # every request of the call gets the error
                    res = [e] * len(idx)
                for i, r in zip(idx, res):
                    out[i] = r
            return out

        async def _generate(self, job: Job):
            res = await self._batched(job)
            if isinstance(res, Exception):
                raise res
            return res

        @app.get(f"{ROUTE}/models")
        async def models(self):
            return {"object": "list", "data": [{"id": self.name, "object": "model",
                                                "created": 0, "owned_by": "relift_ray"}]}

        @app.get("/stats")
        async def stats(self):
            """This replica's requests and generate calls (batching shares the calls)."""
            return dict(self.engine.stats)

        @app.post(f"{ROUTE}/completions")
        async def completions(self, req: CompletionRequest):
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            job = to_job(req, prompts, req.max_tokens, req.logprobs)
            if req.stream:
                return StreamingResponse(self._stream_completion(job),
                                         media_type="text/event-stream")
            groups = await self._generate(job)
            return completion_body(self.engine, self.name, job, groups)

        @app.post(f"{ROUTE}/chat/completions")
        async def chat(self, req: ChatCompletionRequest):
            prompt = self.engine.chat_prompt([m.model_dump() for m in req.messages])
            top = (req.top_logprobs or 0) if req.logprobs else None
            job = to_job(req, [prompt], req.max_completion_tokens or req.max_tokens
                         or CHAT_MAX_TOKENS, top)
            if req.stream:
                return StreamingResponse(self._stream_chat(job),
                                         media_type="text/event-stream")
            (group,) = await self._generate(job)
            return chat_body(self.engine, self.name, job, group)

        # -------------------------------------------------------------- streams
        async def _chunks(self, job: Job):
            """(row, text delta, choice or None) as generation goes; a request that asks for
            log-probs is generated first and then sent token by token with them."""
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()
            if job.top is not None:
                groups = await self._generate(job)
                rows = [c for group in groups for c in group]  # index i * n + j
                tok = self.engine.tok
                for row, c in enumerate(rows):
                    sent = 0
                    for k, t in enumerate(c.token_ids):
                        # the text so far decoded whole (a character may span tokens)
                        text = tok.decode(c.token_ids[:k + 1], skip_special_tokens=True)
                        safe = len(text) - (1 if text.endswith("\ufffd") else 0)
                        piece = Choice([t], text[sent:safe], "", c.logprobs[k:k + 1],
                                       c.top[k:k + 1] if c.top else [])
                        sent = max(sent, safe)
                        yield row, piece.text, piece
                    if len(c.text) > sent:  # the rest of the text (a stop cut mid-token)
                        yield row, c.text[sent:], None
                for row, c in enumerate(rows):
                    yield row, None, c
                return

            def emit(row, delta):
                loop.call_soon_threadsafe(queue.put_nowait, (row, delta))

            task = loop.run_in_executor(None, self.engine.stream, job, emit)
            while True:
                get = asyncio.ensure_future(queue.get())
                finished, _ = await asyncio.wait({get, task},
                                                 return_when=asyncio.FIRST_COMPLETED)
                if get in finished:
                    row, delta = get.result()
                    yield row, delta, None
                    continue
                get.cancel()
                while not queue.empty():
                    row, delta = queue.get_nowait()
                    yield row, delta, None
                for row, c in enumerate(task.result()):
                    yield row, None, c
                return

        async def _stream_completion(self, job: Job):
            rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
            try:
                async for row, delta, c in self._chunks(job):
                    choice = {"index": row, "text": delta or "", "logprobs": None,
                              "finish_reason": None if delta is not None else c.finish_reason}
                    if delta is not None and c is not None:
                        choice["logprobs"] = _completion_logprobs(self.engine, c)
                    yield _sse({"id": rid, "object": "text_completion", "created": created,
                                "model": self.name, "choices": [choice]})
            except Exception as e:  # the stream has started: the error goes in it
                yield _sse(error_body(str(e), None, "server_error"))
            yield "data: [DONE]\n\n"

        async def _stream_chat(self, job: Job):
            rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

            def chunk(row, delta, finish, logprobs=None):
                return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                             "model": self.name, "choices": [
                                 {"index": row, "delta": delta, "logprobs": logprobs,
                                  "finish_reason": finish}]})
            try:
                for row in range(job.params.n):
                    yield chunk(row, {"role": "assistant", "content": ""}, None)
                async for row, delta, c in self._chunks(job):
                    if delta is None:
                        yield chunk(row, {}, c.finish_reason)
                    else:
                        lp = _chat_logprobs(self.engine, c) if c is not None else None
                        yield chunk(row, {"content": delta}, None, lp)
            except Exception as e:
                yield _sse(error_body(str(e), None, "server_error"))
            yield "data: [DONE]\n\n"

    return OpenAIServer


def build_app(model_path: str, model_name: str, backend: str = "transformers", *,
              use_gpu: bool = False, dtype: str = "float32", threads: int = 0,
              num_cpus: float = 1.0, replicas: int = 1, tensor_parallel: int = 1,
              batch_size: int = 8, batch_wait_ms: float = 10.0):
    """The Serve application for a backend (``transformers`` or ``vllm``)."""
    if backend == "vllm":
        from ray.serve.llm import LLMConfig, build_openai_app
        llm = LLMConfig(
            model_loading_config={"model_id": model_name, "model_source": model_path},
            deployment_config={"num_replicas": replicas},
            engine_kwargs={"tensor_parallel_size": tensor_parallel, "dtype": dtype})
        return build_openai_app({"llm_configs": [llm]})
    if backend != "transformers":
        raise ValueError(f"serve backend {backend!r}: must be transformers or vllm")
    server = build_deployment(batch_size, batch_wait_ms)
    # a replica takes enough requests at once to fill a batch (and queue the next one)
    return server.options(num_replicas=replicas, max_ongoing_requests=max(8, 2 * batch_size),
                          ray_actor_options={
        "num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0}).bind(
        model_path, model_name, "cuda" if use_gpu else "cpu", dtype, threads, batch_size)


def start(model: str, *, backend: str = "transformers", host: str = "127.0.0.1",
          port: int = 8000, name: str = "", **kwargs) -> str:
    """Resolve ``model``, deploy it on the running Ray cluster; returns the base URL."""
    from ray import serve

    from relift_ray.eval_job import resolve_model_path
    path = resolve_model_path(model)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(path, name or model, backend, **kwargs)
    serve.run(app, name="relift", route_prefix="/")
    return f"http://{host}:{port}{ROUTE}"


def serve_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="relift serve", description=(
        "Serve a model or checkpoint as an OpenAI-compatible API (completions and chat)."))
    p.add_argument("--model", required=True, help="HF folder, hub id, checkpoint or run folder")
    p.add_argument("--name", default="", help="the model name clients send (default: --model)")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu", action="store_true", help="transformers backend on a GPU")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8,
                   help="concurrent requests sharing one forward pass (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with")
    p.add_argument("--tp", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads per CPU replica")
    p.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    p.add_argument("--address", default="auto", help="Ray address (auto: join or start local)")
    args = p.parse_args(argv)

    from relift_ray.config import RunConfig
    from relift_ray.data import DataError
    from relift_ray.driver import init_ray

    cfg = RunConfig()
    cfg.cluster.address = args.address
    init_ray(cfg)
    try:
        url = start(args.model, backend=args.backend, host=args.host, port=args.port,
                    name=args.name, use_gpu=args.gpu, replicas=args.replicas,
                    tensor_parallel=args.tp, dtype=args.dtype, threads=args.threads,
                    num_cpus=args.num_cpus,
                    **({"batch_size": args.batch_size, "batch_wait_ms": args.batch_wait_ms}
                       if args.backend == "transformers" else {}))
    except DataError as e:
        print(f"error: {e}")
        return 2
    print(f"[serve] {args.model} at {url} (POST /completions, /chat/completions; "
          f"OpenAPI page at {url.rsplit('/v1', 1)[0]}/docs; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve
        serve.shutdown()
    return 0
