"""The learner group's torch process group, set up by Ray Train without torch in its controller.

Ray Train's own ``TorchConfig`` lives in a module that imports torch at the top, and its
controller actor unpickles that config, so the controller (a process that runs no model)
imports torch before it starts anything else: about 1 s of CPU, on the way to step 1, in the
one chain nothing else can overlap (controller, then its helper actors, then the workers).
``LearnerTorchConfig`` is the same setup from a module that imports no torch: the controller
runs ``LearnerTorchBackend``, whose functions run in the workers, and only the workers import
torch (they train with it anyway). What it does per worker is what ``TorchConfig`` does:
MASTER_ADDR/MASTER_PORT from rank 0, the torch.distributed variables (RANK, LOCAL_RANK, ...),
``init_process_group`` (gloo on CPU, NCCL on GPU), the CUDA device set for the training
function, and the group destroyed at the end. The worker-side steps are Ray Train's own
functions (ray is pinned), imported where they run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig


@dataclass
class LearnerTorchConfig(BackendConfig):
    """``TorchTrainer(torch_config=...)`` for the learner group: ``backend`` is "gloo" or
    "nccl" (None: NCCL when the workers have GPUs, else gloo, as Ray Train decides)."""

    backend: str | None = None
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return LearnerTorchBackend

    @property
    def train_func_context(self):
        return _CudaDevice

    @property
    def framework(self):
        # Ray Train's worker side imports torch: on the workers only, never in its controller
        from ray.train.v2._internal.util import TrainingFramework
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "timeout_s": self.timeout_s}


class _CudaDevice:
    """Around the training function in each worker: its CUDA device, as Ray Train sets it."""

    def __enter__(self):
        # Ray Train's torch backend imports torch: on the workers only, never in its controller
        from ray.train.torch.config import TorchConfigContextManager
        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_distributed_env() -> None:
    # Ray Train's torch backend imports torch: on the workers only, never in its controller
    from ray.train.torch.config import _set_torch_distributed_env_vars
    _set_torch_distributed_env_vars()


def _init_group(**kwargs) -> None:
    # Ray Train's torch backend imports torch: on the workers only, never in its controller
    from ray.train.torch.config import _setup_torch_process_group
    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    # Ray Train's torch backend imports torch: on the workers only, never in its controller
    from ray.train.torch.config import _shutdown_torch
    _shutdown_torch(destroy_process_group=destroy_process_group)


class LearnerTorchBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: LearnerTorchConfig):
        # Ray Train's worker side: on the workers only, never in its controller
        from ray.train._internal.utils import get_address_and_port
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_distributed_env)  # init_process_group reads them
        ray.get([worker_group.execute_single_async(
            i, _init_group, backend=backend, world_rank=i, world_size=len(worker_group),
            init_method="env://", timeout_s=backend_config.timeout_s)
            for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config):
        try:
            ray.get(worker_group.execute_async(_shutdown,
                                               destroy_process_group=len(worker_group) > 1),
                    timeout=30)
        except ray.exceptions.GetTimeoutError:
            pass  # the workers are being torn down anyway
