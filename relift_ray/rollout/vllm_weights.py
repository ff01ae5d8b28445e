"""The weight-transfer engine of vLLM's CPU build: a state dict handed over in the engine's
own process.

vLLM's built-in engines move weights by CUDA IPC or NCCL; neither exists on CPU. This one is
registered under ``STATE_DICT`` in vLLM's ``WeightTransferEngineFactory`` and driven through
the same API as the others (``LLM.start_weight_update``, ``update_weights``,
``finish_weight_update``). Its update info carries the tensors themselves, so the engine must
live in the caller's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as the CPU generator runs
it): the learner's state dict reaches the generator actor through Ray's object store, and
from there the engine reads it in place.

Why through the transfer API and not ``model.load_weights`` directly: the CPU backend repacks
linear weights after loading them (``process_weights_after_loading``). Layerwise reloading
(``initialize_layerwise_reload`` / ``finalize_layerwise_reload``, what vLLM's IPC engine
does) loads the checkpoint-format tensors and then re-runs that processing.

This module imports vLLM at its top: only the vLLM generator imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.model_executor.model_loader.reload import (
    finalize_layerwise_reload,
    initialize_layerwise_reload,
)

STATE_DICT = "relift_state_dict"


@dataclass
class StateDictInitInfo(WeightTransferInitInfo):
    """Nothing to set up: sender and receiver share a process."""


@dataclass
class StateDictUpdateInfo(WeightTransferUpdateInfo):
    names: list = field(default_factory=list)
    tensors: list = field(default_factory=list)

    def __post_init__(self):
        if len(self.names) != len(self.tensors):
            raise ValueError(f"{len(self.names)} names for {len(self.tensors)} tensors")


class StateDictWeightTransferEngine(
        WeightTransferEngine[StateDictInitInfo, StateDictUpdateInfo]):
    init_info_cls = StateDictInitInfo
    update_info_cls = StateDictUpdateInfo

    def init_transfer_engine(self, init_info: StateDictInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: StateDictUpdateInfo) -> None:
        self.model.load_weights(zip(update_info.names, update_info.tensors))

    def finish_weight_update(self) -> None:
        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        pass


def register() -> str:
    """Register the engine with vLLM's factory (once per process); returns its backend name."""
    if STATE_DICT not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(STATE_DICT, StateDictWeightTransferEngine)
    return STATE_DICT
