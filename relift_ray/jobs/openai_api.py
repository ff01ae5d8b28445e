"""The OpenAI-compatible surface of ``relift serve``: the limits a server holds requests to
(``ServeLimits``, its CLI flags generated from it), request models (pydantic validates them;
a bad field gets a 400 in OpenAI's error shape naming it), the response bodies of
completions and chat completions (with log-probs), server-sent-event chunks, and the FastAPI
app: its routes call the deployment's methods (relift_ray.jobs.serve), ``Guard`` checks the
API key and the body size, and every error has OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from relift_ray.jobs.text_engine import MAX_TOP_LOGPROBS, Choice, Job, RequestError, TextEngine
from relift_ray.records import SamplingParams

ROUTE = "/v1"


CHAT_MAX_TOKENS = 1024  # a chat request without max_tokens (OpenAI's has no fixed limit)


@dataclass
class ServeLimits:
    """What one request may ask of a replica (``relift serve --max-queue ...``). A request
    over a limit gets a 400 naming the field, or the status given below."""
    max_body_bytes: int = field(default=1 << 20, metadata={
        "help": "request body size; a larger body gets 413"})
    max_prompts: int = field(default=16, metadata={"help": "prompts in one completions "
                                                    "request"})
    max_prompt_tokens: int = field(default=4096, metadata={
        "help": "tokens of one prompt (the model's context bounds it too, and max_tokens is "
                "capped at the context minus the prompt)"})
    max_n: int = field(default=8, metadata={"help": "choices per prompt (n)"})
    max_stops: int = field(default=4, metadata={"help": "stop strings per request"})
    max_stop_chars: int = field(default=64, metadata={"help": "characters of a stop string"})
    request_timeout_s: float = field(default=120.0, metadata={
        "help": "seconds from a request's arrival to its last token; past it the generation "
                "stops and the request gets 503 (a stream: an error event)"})
    max_queue: int = field(default=32, metadata={
        "help": "requests a replica holds at once, generating or waiting; one more gets 429 "
                "with Retry-After"})

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"ServeLimits.{f.name} must be > 0, got "
                                 f"{getattr(self, f.name)}")


def add_limit_args(parser) -> None:
    """One ``--max-...`` flag per ``ServeLimits`` field, its help the field's."""
    for f in dataclasses.fields(ServeLimits):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default, help=f"{f.metadata['help']} (default "
                                                    f"{f.default})")


def limits_from_args(args) -> ServeLimits:
    return ServeLimits(**{f.name: getattr(args, f.name)
                          for f in dataclasses.fields(ServeLimits)})


class Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI fields we do not use are ignored
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=64)
    seed: int | None = Field(None, ge=0, le=2 ** 31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False

    ignore_eos: bool = False  # vLLM's extension: max_tokens whatever the model says

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if not all(stops):
            raise ValueError("stop strings must not be empty")
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


def check_request(req, prompts: list[str], limits: ServeLimits) -> None:
    """The limits that need no tokenizer: n, prompts, stop strings."""
    if req.n > limits.max_n:
        raise RequestError(f"n is {req.n}: at most {limits.max_n} choices per prompt", "n")
    if req.n > 1 and req.temperature == 0:
        raise RequestError("n > 1 needs temperature > 0 (greedy decoding gives one answer)",
                           "n")
    if len(prompts) > limits.max_prompts:
        raise RequestError(f"{len(prompts)} prompts: at most {limits.max_prompts} per "
                           f"request", "prompt")
    stops = req.stop or []
    if len(stops) > limits.max_stops or any(len(s) > limits.max_stop_chars for s in stops):
        raise RequestError(f"at most {limits.max_stops} stop strings of at most "
                           f"{limits.max_stop_chars} characters", "stop")


def completion_budget(engine: TextEngine, prompts: list[str], asked: int | None,
                      limits: ServeLimits, fields: tuple[str, str], default: int = 0) -> int:
    """The tokens a request may generate: ``asked`` if the longest prompt and it fit the
    model's context (else a 400 naming the field, as OpenAI's), or without ``asked`` the
    context's room up to ``default``. ``fields``: (the max-tokens field, the prompt's)."""
    longest = max(engine.prompt_lengths(prompts))
    most = min(limits.max_prompt_tokens, engine.context - 1)
    if longest > most:
        raise RequestError(f"the prompt has {longest} tokens: at most {most}", fields[1],
                           code="context_length_exceeded")
    room = engine.context - longest
    if asked is None:
        return min(default, room)
    if asked > room:
        raise RequestError(
            f"This model's maximum context length is {engine.context} tokens. However, you "
            f"requested {longest + asked} tokens ({longest} in the prompt, {asked} in the "
            f"completion). Please reduce the prompt or {fields[0]}.", fields[0],
            code="context_length_exceeded")
    return asked


def to_job(req, prompts: list[str], max_tokens: int, top: int | None) -> Job:
    return Job(prompts, SamplingParams(
        n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens,
        seed=req.seed if req.seed is not None else -1, logprobs=top is not None),
        top, list(req.stop or []), req.ignore_eos)


def completion_logprobs(engine: TextEngine, c: Choice) -> dict:
    toks = [engine.tok.decode([t]) for t in c.token_ids]
    offsets, pos = [], 0
    for t in toks:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": toks, "token_logprobs": c.logprobs, "text_offset": offsets,
            "top_logprobs": [{engine.tok.decode([i]): v for i, v in alts} for alts in c.top]
            if c.top else None}


def chat_logprobs(engine: TextEngine, c: Choice) -> dict:
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
                            "logprobs": completion_logprobs(engine, c)
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
                         "logprobs": chat_logprobs(engine, c) if job.top is not None
                         else None, "finish_reason": c.finish_reason}
                        for j, c in enumerate(group)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": used,
                      "total_tokens": prompt + used}}


ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               404: "invalid_request_error", 405: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
               503: "server_error"}


def error_body(message: str, param: str | None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict | None = None):
    from fastapi.responses import JSONResponse
    return JSONResponse(error_body(message, param, ERROR_TYPES.get(status, "server_error"),
                                   code), status_code=status, headers=headers)


def key_sha256(key: str) -> str:
    """What a replica keeps of the API key: its sha256 (the key itself is in no config)."""
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class Guard:
    """ASGI middleware in front of the routes: the API key (``Authorization: Bearer <key>``,
    compared in constant time), the body size (413, counted as it arrives: a body without
    Content-Length too), and a 500 in OpenAI's shape for any error the routes let through."""

    def __init__(self, app, key_sha256: str = "", max_body_bytes: int = 1 << 20):
        self.app, self.key, self.max_body = app, key_sha256, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key and not self._key_ok(headers.get(b"authorization", b"")):
            return await error_response(401, "a valid API key is needed: send the header "
                                        "'Authorization: Bearer <key>'",
                                        code="invalid_api_key")(scope, receive, send)
        length = headers.get(b"content-length", b"0") or b"0"
        if not length.isdigit():
            return await error_response(400, "Content-Length is not a number", "body")(
                scope, receive, send)
        if int(length) > self.max_body:
            return await self._too_large(scope, receive, send)
        seen, started = [0], [False]

        async def counted():
            from fastapi import HTTPException
            msg = await receive()
            seen[0] += len(msg.get("body", b""))
            if seen[0] > self.max_body:  # FastAPI passes an HTTPException from here on
                raise HTTPException(413, f"the request body is over {self.max_body} bytes")
            return msg

        async def sending(msg):
            started[0] = True
            await send(msg)
        try:
            await self.app(scope, counted, sending)
        except Exception as e:
            if type(e).__name__ == "TaskCancelledError":  # Ray Serve's: the client left
                raise
            logging.getLogger("relift_ray.serve").exception("request failed")
            if not started[0]:
                await error_response(500, f"internal error: {type(e).__name__}: {e}")(
                    scope, receive, send)

    def _key_ok(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        given = hashlib.sha256(token.strip().encode()).hexdigest()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.key)

    async def _too_large(self, scope, receive, send):
        await error_response(413, f"the request body is over {self.max_body} bytes",
                             "body", "request_too_large")(scope, receive, send)


def openai_app(server, key: str = "", limits: ServeLimits | None = None):
    """The FastAPI app of the transformers deployment: routes calling ``server`` (a replica
    of relift_ray.jobs.serve.OpenAIServer), validation, errors, the key and body guard."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    limits = limits or ServeLimits()
    app = FastAPI(title="relift_ray", description="OpenAI-compatible completions and chat "
                  "completions of a relift_ray model")
    app.add_middleware(Guard, key_sha256=key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in err.get("loc", []) if x != "body"]
        param = loc[0] if loc else "body"
        msg = err.get("msg", "invalid request")
        if err.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", "body"
        return error_response(400, f"{param}: {msg}", param)

    @app.exception_handler(RequestError)
    async def _bad(request: Request, exc: RequestError):
        return error_response(exc.status, str(exc), exc.param, exc.code, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return error_response(exc.status_code, str(exc.detail), None,
                              code.get(exc.status_code), getattr(exc, "headers", None))

    @app.get(f"{ROUTE}/models")
    async def models():
        return server.models()

    @app.get("/stats")
    async def stats():
        """This replica's requests, generate calls and generations under way."""
        return server.stats()

    @app.post(f"{ROUTE}/completions")
    async def completions(req: CompletionRequest):
        return await server.completions(req)

    @app.post(f"{ROUTE}/chat/completions")
    async def chat(req: ChatCompletionRequest):
        return await server.chat(req)

    return app
