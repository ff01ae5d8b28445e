"""The scheduler as a job runs it: the named ``scheduler`` actor.

``SchedulerActor`` reads its questions and tokenizer itself, from the config, and finds the
generator and reward actors by name, so Ray can restart it from these small arguments alone
(actor handles among an actor's constructor arguments make its restarts depend on objects
that may be gone). The runtime layer (relift_ray.runtime.topology) creates it.
"""
from __future__ import annotations

import ray

from relift_ray.config import RunConfig
from relift_ray.core.questions import steps_of
from relift_ray.data.load import load_data
from relift_ray.imports import skip_unused_modules
from relift_ray.records import DataInfo
from relift_ray.scheduler.scheduler import Scheduler


class SchedulerActor(Scheduler):
    """``Scheduler`` built from a config dict, a model path and the actors' names."""

    def __init__(self, cfg_dict: dict, model_path: str, generator_names: list[str],
                 reward_names: list[str]):

        skip_unused_modules()
        # transformers: after skip_unused_modules() (relift_ray.imports)
        from transformers import AutoTokenizer

        generators = [ray.get_actor(n) for n in generator_names]
        rewarders = [ray.get_actor(n) for n in reward_names]
        cfg = RunConfig.from_dict(cfg_dict)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        train, test, dropped = load_data(cfg, tokenizer, log=lambda line: None)
        self._data = DataInfo(test=tuple(test), train=len(train), dropped=dropped,
                              demos=sum(q.demo is not None for q in train),
                              steps=steps_of(cfg, len(train)))
        super().__init__(cfg, train, tokenizer, generators, rewarders, val_questions=test)

    def data_info(self) -> DataInfo:
        """What the driver reports and evaluates on (it loads no tokenizer of its own)."""
        return self._data
