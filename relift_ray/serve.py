"""Serving a model or checkpoint as an OpenAI-compatible completions endpoint on Ray Serve.

    relift serve --model runs/ray_train/toy-relift            # CPU: the transformers deployment
    relift serve --model <checkpoint> --backend vllm --tp 1   # GPU: ray.serve.llm with vLLM

``--model`` takes what the evaluation job takes (an HF folder, a hub id, a checkpoint, or a
run's folder: its newest checkpoint). The transformers deployment answers

    GET  /v1/models
    POST /v1/completions  {"prompt": "..." | [...], "max_tokens": 16, "temperature": 1.0,
                           "top_p": 1.0, "n": 1, "seed": 0}

with OpenAI's response shapes (``choices[i].text``, ``finish_reason`` "stop" or "length",
``usage``); a malformed request gets a 400 whose message names the field. The vLLM backend is
Ray Serve LLM's own OpenAI app (completions and chat completions).
"""
from __future__ import annotations

import asyncio
import time
import uuid

from relift_ray.records import Question, SamplingParams

ROUTE = "/v1"


class RequestError(ValueError):
    """A malformed completions request; ``param`` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def parse_request(body) -> tuple[list[str], SamplingParams]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", "body")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(
            isinstance(p, str) and p for p in prompts):
        raise RequestError("'prompt' must be a non-empty string or a list of them", "prompt")

    def number(name, default, kind, low, high):
        value = body.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and not float(value).is_integer()) or not low <= value <= high:
            raise RequestError(f"'{name}' must be a {kind.__name__} in [{low}, {high}], "
                               f"got {value!r}", name)
        return kind(value)

    params = SamplingParams(n=number("n", 1, int, 1, 64),
                            temperature=number("temperature", 1.0, float, 0.0, 10.0),
                            top_p=number("top_p", 1.0, float, 1e-6, 1.0),
                            max_new_tokens=number("max_tokens", 16, int, 1, 1 << 20),
                            seed=number("seed", 0, int, 0, 2 ** 31 - 1))
    return prompts, params


class CompletionServer:
    """The transformers deployment: one ``HFGenerator`` per replica."""

    def __init__(self, model_path: str, model_name: str, device: str = "cpu",
                 dtype: str = "float32", threads: int = 0):
        from relift_ray.generators.hf import HFGenerator
        self.gen = HFGenerator(model_path, device=device, dtype=dtype, threads=threads)
        self.model_name = model_name
        self.lock = asyncio.Lock()  # one generate at a time per replica

    def complete(self, body) -> dict:
        prompts, params = parse_request(body)
        qs = [Question(id=str(i), prompt=p, answer="") for i, p in enumerate(prompts)]
        groups = self.gen.generate(qs, params)
        eos = self.gen.tokenizer.eos_token_id
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, group in enumerate(groups):
            prompt_tokens += len(group[0].prompt_ids)
            for j, c in enumerate(group):
                completion_tokens += len(c.response_ids)
                stopped = bool(c.response_ids) and c.response_ids[-1] == eos
                choices.append({"index": i * params.n + j, "text": c.text, "logprobs": None,
                                "finish_reason": "stop" if stopped else "length"})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            return JSONResponse({"object": "list", "data": [
                {"id": self.model_name, "object": "model", "owned_by": "relift_ray"}]})
        if request.method == "POST" and path.endswith("/completions"):
            try:
                body = await request.json()
            except Exception:
                return _error("the request body is not valid JSON", "body", 400)
            try:
                async with self.lock:
                    return JSONResponse(await asyncio.to_thread(self.complete, body))
            except RequestError as e:
                return _error(str(e), e.param, 400)
        return _error(f"{request.method} {path}: not found (GET {ROUTE}/models, "
                      f"POST {ROUTE}/completions)", "path", 404)


def _error(message: str, param: str, status: int):
    from starlette.responses import JSONResponse
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param}}, status_code=status)


def build_app(model_path: str, model_name: str, backend: str = "transformers", *,
              use_gpu: bool = False, dtype: str = "float32", threads: int = 0,
              num_cpus: float = 1.0, replicas: int = 1, tensor_parallel: int = 1):
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
    from ray import serve
    deployment = serve.deployment(CompletionServer, name="relift-completions",
                                  num_replicas=replicas,
                                  ray_actor_options={"num_cpus": num_cpus,
                                                     "num_gpus": 1 if use_gpu else 0})
    return deployment.bind(model_path, model_name, "cuda" if use_gpu else "cpu", dtype, threads)


def start(model: str, *, backend: str = "transformers", host: str = "127.0.0.1",
          port: int = 8000, name: str = "", **kwargs) -> str:
    """Resolve ``model``, deploy it on the running Ray cluster; returns the base URL."""
    from ray import serve

    from relift_ray.eval_job import resolve_model_path
    path = resolve_model_path(model)
    serve.start(http_options={"host": host, "port": port})
    app = build_app(path, name or model, backend, **kwargs)
    serve.run(app, name="relift", route_prefix=ROUTE if backend == "transformers" else "/")
    return f"http://{host}:{port}{ROUTE}"


def serve_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="relift serve", description=(
        "Serve a model or checkpoint as an OpenAI-compatible completions endpoint."))
    p.add_argument("--model", required=True, help="HF folder, hub id, checkpoint or run folder")
    p.add_argument("--name", default="", help="the model name clients send (default: --model)")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu", action="store_true", help="transformers backend on a GPU")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--tp", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads per CPU replica")
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
                    tensor_parallel=args.tp, dtype=args.dtype, threads=args.threads)
    except DataError as e:
        print(f"error: {e}")
        return 2
    print(f"[serve] {args.model} at {url}/completions (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve
        serve.shutdown()
    return 0
