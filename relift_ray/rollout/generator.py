"""The generator interface every backend implements.

A generator holds one copy of the policy, samples completions for questions, and loads new
weights when the learner publishes them; every completion carries the weight version it was
sampled with. Plain classes: a job makes them Ray actors (``generator-0``, ...); tests call
them in-process.
"""
from __future__ import annotations

from typing import Protocol

from relift_ray.records import Completion, Question, SamplingParams
from relift_ray.rollout.vllm_engine import VLLMGenerator


class Generator(Protocol):
    weight_version: int

    def generate(self, questions: list[Question], params: SamplingParams) -> list[list[Completion]]:
        """For each question, params.n completions (in question order)."""

    def load_weights(self, version: int, state_dict: dict) -> int:
        """Replace the policy's weights; return the new version."""

    def get_version(self) -> int:
        ...


def make_generator(backend: str, model_path: str, **kwargs) -> Generator:
    if backend == "transformers":
        # each backend's module (torch, or vLLM) only when it is chosen
        from relift_ray.rollout.hf import HFGenerator
        return HFGenerator(model_path, **kwargs)
    if backend == "vllm":
        return VLLMGenerator(model_path, **kwargs)
    raise ValueError(f"generator backend {backend!r} is not available (transformers | vllm)")
