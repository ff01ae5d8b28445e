"""The weight publisher: how new policy weights reach the generators, and nothing else does.

``make_publisher(cfg, generators, ...)`` picks one implementation once, from config; the learner
step calls ``publisher.after_generation()`` once the step's batch is made and
``publisher.publish(learner, version)`` after the update. Four paths:

- ``InProcessPublisher`` (in-process runs: tests, the comparison job): the generator object
  loads a CPU copy of the state dict directly.
- ``ObjectStorePublisher`` (``generator.weight_sync=object_store``; any backend, CPU too): rank 0
  puts a CPU state dict in Ray's object store once; every generator loads that one object. The
  scheduler keeps the reference, so a generator that Ray restarted after a crash gets the
  current weights before it samples again. With a scheduler actor (and no engine sleeping on
  the learners' GPUs) the reference goes to it in one call, and it has the generators load it
  (``Scheduler.take_weights``): their load queues before its next generate call to them, so the
  learners wait for one round trip, not three (tell, load, published).
- ``IPCPublisher`` (``ipc``; vLLM sharing the learners' GPUs): the learner's CUDA tensors are
  packed into buckets of ``generator.bucket_mb`` and handed over as CUDA IPC handles through
  vLLM's weight-transfer API; nothing leaves the GPU. Engines sleep while the learners train
  (``after_generation``) and wake, weights first and KV cache after, around each sync.
- ``NCCLPublisher`` (``nccl``; vLLM on GPUs of their own): learner rank 0 joins one NCCL group
  with every generator worker and broadcasts packed buckets.

What the two object paths send is ``learner.sync_weights()``: the state dict, or in a LoRA
run (model.lora) its adapters alone (``AdapterWeights``, model.lora.sync=adapter) or the
model with them merged in (merged). ``sent_bytes`` is what the last publish sent.

Every transfer is versioned (each generator reports the version it holds afterwards; a mismatch
is an error) and the vLLM paths run under a watchdog (``generator.sync_timeout_s``): a transfer
that hangs fails the step with ``WeightSyncTimeout`` naming the version and the phase. Under
ZeRO-3 the parameters are gathered one at a time while they are packed, so the full model never
has to fit on one GPU at once. Generators are in-process objects or Ray actor handles; the calls
below work on both. vLLM and DeepSpeed are imported lazily, only on the paths that use them.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import ray

from relift_ray.background import Background, free_port
from relift_ray.records import check_versions
from relift_ray.rollout.calls import call_all, call_within, get_or_kill, is_actor


class WeightSyncTimeout(RuntimeError):
    """A weight transfer did not finish within generator.sync_timeout_s."""


def on_all(gens: list, method: str, *args) -> list:
    """The same call on every generator (Ray handles run concurrently)."""
    return call_all(gens, method, [args] * len(gens))


def begin_all(gens: list, method: str, *args):
    """Starts the same call on every generator without waiting for it; returns a function
    that waits for all of them (and raises the first error)."""
    if gens and is_actor(gens[0]):
        refs = [getattr(g, method).remote(*args) for g in gens]
        return lambda: ray.get(refs)
    running = [Background(lambda g=g: getattr(g, method)(*args), f"begin-{method}")
               for g in gens]
    return lambda: [r.result() for r in running]


def named_weights(module, zero3: bool = False):
    """(name, full tensor) for each parameter, in order. Under ZeRO-3 each parameter is
    gathered while it is read, then released (all ranks must iterate together)."""
    # DeepSpeed: only under ZeRO-3
    import deepspeed
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], enabled=zero3):
            yield name, p.data


def _full_nbytes(t) -> int:
    # a ZeRO-3 partition reports its whole tensor's size through ds_numel
    return getattr(t, "ds_numel", t.numel()) * t.element_size()


def weights_nbytes(module) -> int:
    """Bytes of the full model."""
    return sum(_full_nbytes(p) for p in module.parameters())


def payload_nbytes(payload) -> int:
    """Bytes of what a sync sends: a state dict, or a LoRA run's AdapterWeights."""
    if hasattr(payload, "nbytes"):
        return int(payload.nbytes)
    return sum(t.numel() * t.element_size() for t in payload.values())


def bucket_bytes_for(module_or_tensors, bucket_mb: int) -> int:
    """The packed bucket size: generator.bucket_mb, or the largest tensor if that is bigger
    (a tensor is never split across buckets; a 7B model's embedding alone is over 1 GiB)."""
    tensors = (module_or_tensors.parameters() if hasattr(module_or_tensors, "parameters")
               else module_or_tensors)
    return max(bucket_mb * 2 ** 20, max(map(_full_nbytes, tensors), default=0))


def ipc_send(generators: list, named, bucket_bytes: int, lead: bool = True) -> None:
    """One update of the generators' engines over CUDA IPC: ``named`` (name, CUDA tensor)
    pairs packed into buckets. Only the lead (rank 0) drives the engines; the other ranks'
    handles reach them through vLLM's all-gather."""
    # vLLM: only on the CUDA IPC path
    from vllm.distributed.weight_transfer.ipc_engine import (
        IPCTrainerSendWeightsArgs,
        IPCWeightTransferEngine,
    )

    def push(info):
        on_all(generators, "update_weights", {"update_info": asdict(info)})

    if lead:
        on_all(generators, "start_weight_update")
    try:
        IPCWeightTransferEngine.trainer_send_weights(
            named, IPCTrainerSendWeightsArgs(send_mode=push, packed=True,
                                             packed_buffer_size_bytes=bucket_bytes))
    finally:  # an update left open blocks every later one
        if lead:
            on_all(generators, "finish_weight_update")


class IPCWeightSync:
    """Colocated: the learner and the generators share GPUs; buckets go over CUDA IPC."""

    def __init__(self, generators: list, bucket_mb: int = 512, timeout_s: float = 300.0):
        self.generators = generators
        self.bucket_mb = bucket_mb
        self.timeout_s = timeout_s

    def send(self, module, version: int, zero3: bool = False, rank: int = 0) -> dict:
        """Every learner rank calls this (each shares a GPU with a generator: vLLM gathers
        the ranks' IPC handles by GPU); rank 0 alone drives the generators."""
        lead = rank == 0

        def run():
            ipc_send(self.generators, named_weights(module, zero3),
                     bucket_bytes_for(module, self.bucket_mb), lead)
            return on_all(self.generators, "set_version", version) if lead else [version]

        t0 = time.perf_counter()
        got = with_deadline(run, self.timeout_s, f"weight sync of version {version} (ipc)")
        check_versions(got, version)
        return {"weight_sync_seconds": time.perf_counter() - t0,
                "weight_sync_bytes": weights_nbytes(module)}


class NCCLWeightSync:
    """Generators on GPUs of their own: one NCCL group (learner rank 0 + every generator
    worker), packed buckets broadcast from rank 0."""

    def __init__(self, generators: list, master_address: str, master_port: int,
                 workers_per_generator: int = 1, timeout_s: float = 300.0):
        self.generators = generators
        self.timeout_s = timeout_s
        self.per_generator = workers_per_generator
        self.world = 1 + len(generators) * workers_per_generator
        self.init_info = {"master_address": master_address, "master_port": master_port,
                          "world_size": self.world}
        self.group = None

    def connect(self) -> None:
        """Rendezvous: the generators join (asynchronously) while the trainer joins here."""
        # vLLM: only on the NCCL path
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine

        def run():
            refs = [g.init_weight_transfer_engine.remote(
                {"init_info": dict(self.init_info, rank_offset=1 + i * self.per_generator)})
                for i, g in enumerate(self.generators)]
            self.group = NCCLWeightTransferEngine.trainer_init(self.init_info)
            ray.get(refs)

        with_deadline(run, self.timeout_s, f"NCCL weight-sync group of {self.world} ranks")

    def send(self, module, version: int, zero3: bool = False, rank: int = 0) -> dict:
        """Every learner rank calls this; under ZeRO-3 the others take part in gathering each
        parameter, and rank 0 broadcasts it."""
        # vLLM: only on the NCCL path
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerSendWeightsArgs,
            NCCLWeightTransferEngine,
        )

        if rank != 0:
            if zero3:  # take part in gathering each parameter that rank 0 broadcasts
                for _ in named_weights(module, zero3=True):
                    pass
            return {}

        names, dtypes, shapes = [], [], []
        for name, p in module.named_parameters():
            names.append(name)
            dtypes.append(str(p.dtype).split(".")[-1])
            shapes.append(list(getattr(p, "ds_shape", p.shape)))

        def run():
            on_all(self.generators, "start_weight_update")
            try:
                info = {"update_info": {"names": names, "dtype_names": dtypes,
                                        "shapes": shapes, "packed": True}}
                receiving = begin_all(self.generators, "update_weights", info)
                NCCLWeightTransferEngine.trainer_send_weights(
                    named_weights(module, zero3),
                    NCCLTrainerSendWeightsArgs(group=self.group, packed=True))
                receiving()
            finally:  # an update left open blocks every later one (as ipc_send)
                on_all(self.generators, "finish_weight_update")
            return on_all(self.generators, "set_version", version)

        t0 = time.perf_counter()
        got = with_deadline(run, self.timeout_s, f"weight sync of version {version} (nccl)")
        check_versions(got, version)
        return {"weight_sync_seconds": time.perf_counter() - t0,
                "weight_sync_bytes": weights_nbytes(module)}


# ------------------------------------------------------------------ the publisher

class WeightPublisher:
    """Publishes the learner's weights to the generators; one per learner worker (or run).

    ``publish(learner, version)`` is called by every learner rank (collective under ZeRO-3)
    and returns, with the seconds it took, once every generator holds the version (or, with
    the object store and a scheduler actor, has its load queued ahead of its next sampling);
    ``after_generation()`` by every rank once the step's batch exists. With ``colocate``
    (vLLM engines on the learners' GPUs) the engines sleep from
    ``after_generation`` until the next ``publish``, which wakes their weights, sends, and then
    wakes their KV cache."""

    def __init__(self, generators: list, rank: int = 0, zero3: bool = False,
                 colocate: bool = False, scheduler=None, lag: int = 0):
        self.generators, self.rank, self.zero3 = generators, rank, zero3
        self.colocate = colocate
        # asynchronous rollouts (algo.max_staleness = lag): the scheduler says when the last
        # batch of the previous version is sampled, and hears which version is out
        self.scheduler, self.lag = scheduler, lag
        self.waited = 0.0  # seconds the last publish waited for that batch
        self.sent_bytes = 0  # what the last publish sent each generator (rank 0; 0 unknown)
        # deadlines (make_publisher): a call to the scheduler actor, a generator's weight load
        self.within: float | None = None
        self.load_within: float | None = None

    def after_generation(self) -> None:
        if not self.colocate:
            return
        if self.rank == 0:  # free the GPUs for the learners: KV cache dropped, weights to CPU
            on_all(self.generators, "sleep", 1)
        _barrier()  # no rank trains before its GPU's engine sleeps

    def publish(self, learner, version: int) -> float:
        """Seconds the sync took (``self.waited``: the wait before it, asynchronous only)."""
        t0 = time.perf_counter()
        if self.lag and version >= 1 and self.rank == 0 and self.scheduler is not None:
            # batch version + lag is the last one sampled with version - 1: the generators
            # take the new weights once it is (they never wait longer than this sync)
            call_within(self.within, "scheduler", self.scheduler, "wait_generated",
                        version + self.lag, step=version)
        t1 = time.perf_counter()
        self.waited = t1 - t0
        if self.colocate and self.rank == 0:
            on_all(self.generators, "wake_up", ["weights"])
        told = self._send(learner, version)
        if self.colocate and self.rank == 0:
            on_all(self.generators, "wake_up", ["kv_cache"])
        if self.rank == 0 and self.scheduler is not None and not told:
            call_within(self.within, "scheduler", self.scheduler, "weights_published",
                        version, step=version)
        _barrier()  # returns on every rank once the generators hold the version: no rank asks
        # for the next batch (sampled with this version) before rank 0 has published it
        return time.perf_counter() - t1

    def _send(self, learner, version: int) -> bool | None:
        """Sends version ``version``; True when that also told the scheduler it is out."""
        raise NotImplementedError


def _barrier() -> None:
    # torch: only with a process group (learner workers)
    import torch.distributed as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class InProcessPublisher(WeightPublisher):
    """One process: the generator objects load a CPU copy of the weights directly."""

    def _send(self, learner, version: int) -> None:
        sd = learner.sync_weights()
        self.sent_bytes = payload_nbytes(sd)
        check_versions([g.load_weights(version, sd) for g in self.generators], version)


class ObjectStorePublisher(WeightPublisher):
    """Rank 0 puts one CPU state dict in the object store; every generator loads it. The
    scheduler is told the object's reference, to reload generators that Ray restarts."""

    def _send(self, learner, version: int) -> None:
        sd = learner.sync_weights() if (self.rank == 0 or self.zero3) else None
        if self.rank != 0:
            return
        self.sent_bytes = payload_nbytes(sd)
        ref = ray.put(sd)
        if is_actor(self.scheduler) and not self.colocate:
            call_within(self.within, "scheduler", self.scheduler, "take_weights", version,
                        [ref], step=version)
            return True
        loads = [g.load_weights.remote(version, ref) for g in self.generators]
        if self.scheduler is not None:  # in a list, the reference reaches it unresolved
            call_within(self.within, "scheduler", self.scheduler, "remember_weights",
                        version, [ref], step=version)  # while they load
        check_versions([get_or_kill(load, g, self.load_within, f"generator {i}",
                                    "load_weights", version)
                        for i, (load, g) in enumerate(zip(loads, self.generators))], version)


class _VLLMPublisher(WeightPublisher):
    """vLLM's weight-transfer API (IPC or NCCL), behind ``self.sync``."""
    sync = None

    def _send(self, learner, version: int) -> None:
        info = self.sync.send(learner.engine.module, version, self.zero3, self.rank)
        self.sent_bytes = info.get("weight_sync_bytes", 0)


class IPCPublisher(_VLLMPublisher):
    def __init__(self, generators: list, rank: int = 0, zero3: bool = False,
                 bucket_mb: int = 512, timeout_s: float = 300.0, scheduler=None):
        super().__init__(generators, rank, zero3, colocate=True, scheduler=scheduler)
        self.sync = IPCWeightSync(generators, bucket_mb, timeout_s)


class NCCLPublisher(_VLLMPublisher):
    def __init__(self, generators: list, rank: int = 0, zero3: bool = False,
                 tensor_parallel_size: int = 1, timeout_s: float = 300.0, scheduler=None,
                 lag: int = 0):
        super().__init__(generators, rank, zero3, colocate=False, scheduler=scheduler, lag=lag)
        # the group forms at once: rank 0's node address, a free port
        port = free_port() if rank == 0 else 0
        self.sync = NCCLWeightSync(generators, ray.util.get_node_ip_address(), port,
                                   workers_per_generator=tensor_parallel_size,
                                   timeout_s=timeout_s)
        if rank == 0:
            self.sync.connect()


def make_publisher(cfg, generators: list, rank: int = 0, scheduler=None) -> WeightPublisher:
    """The publisher of this run, chosen once from ``generator.weight_sync``: in-process when
    the generators are plain objects, else object store, CUDA IPC or NCCL."""
    g, zero3, lag = cfg.generator, cfg.train.zero_stage == 3, cfg.algo.max_staleness
    if generators and not is_actor(generators[0]):
        p = InProcessPublisher(generators, rank, zero3, scheduler=scheduler, lag=lag)
    elif g.weight_sync == "object_store":
        p = ObjectStorePublisher(generators, rank, zero3, g.colocate, scheduler=scheduler,
                                 lag=lag)
    elif g.weight_sync == "ipc":  # colocated: never asynchronous (config.validate)
        p = IPCPublisher(generators, rank, zero3, g.bucket_mb, g.sync_timeout_s, scheduler)
    else:
        p = NCCLPublisher(generators, rank, zero3, g.tensor_parallel_size, g.sync_timeout_s,
                          scheduler, lag)
    p.within, p.load_within = cfg.cluster.batch_deadline_s, g.sync_timeout_s
    return p


def with_deadline(fn, seconds: float, what: str):
    """Run ``fn()`` in a thread; raise ``WeightSyncTimeout`` if it has not returned in time.

    A hung NCCL call cannot be cancelled from Python; the step fails with a clear error and the
    worker exits, so Ray Train restarts the group from its last checkpoint.
    """
    try:
        return Background(fn, name=f"weight-sync:{what}").result(seconds)
    except TimeoutError:
        raise WeightSyncTimeout(
            f"{what} did not finish in {seconds:g} s (generator.sync_timeout_s): a generator "
            f"may have died or not joined the transfer group; NCCL_DEBUG=INFO shows where it "
            f"stopped") from None
