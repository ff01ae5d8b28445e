"""Generators: one interface (``Generator``), backends chosen by name.

``transformers`` (CPU or GPU) lives in ``hf.py``; a vLLM backend plugs in behind the same
interface and is imported lazily so the CPU install never needs vLLM.
"""
from relift_ray.generators.base import Generator, make_generator

__all__ = ["Generator", "make_generator"]
