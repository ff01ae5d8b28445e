"""The OpenAI-compatible surface of ``relift serve``: request models (pydantic validates them;
a bad field gets a 400 in OpenAI's error shape naming it), the response bodies of
completions and chat completions (with log-probs), server-sent-event chunks, and the FastAPI
app with its error handlers. The routes themselves are the deployment's (relift_ray.jobs.serve).
"""
from __future__ import annotations

import json
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relift_ray.jobs.text_engine import MAX_TOP_LOGPROBS, Choice, Job, RequestError, TextEngine
from relift_ray.records import SamplingParams

ROUTE = "/v1"


CHAT_MAX_TOKENS = 1024  # a chat request without max_tokens (OpenAI's has no fixed limit)


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


def to_job(req, prompts: list[str], max_tokens: int, top: int | None) -> Job:
    if req.n > 1 and req.temperature == 0:
        raise RequestError("n > 1 needs temperature > 0 (greedy decoding gives one answer)",
                           "n")
    return Job(prompts, SamplingParams(
        n=req.n, temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens,
        seed=req.seed if req.seed is not None else -1, logprobs=top is not None),
        top, list(req.stop or []))


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


def error_body(message: str, param: str | None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def openai_app():
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
