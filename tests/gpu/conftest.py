"""GPU tests: the vLLM backend, weight sync and DeepSpeed on CUDA.

They skip without CUDA (and the vLLM ones without vLLM: ``pip install .[gpu]``) and must be run
whenever a GPU is available:  ``python -m pytest tests/gpu -v``.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/helpers.py


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="GPU test: no CUDA device here")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_model():
    """The toy base model (pretrained on levels 1-2), shipped with the package."""
    from relift_ray.data.toy.model import base_model_path
    return base_model_path()


@pytest.fixture(scope="session")
def dist_world1():
    """A one-rank NCCL process group, as Ray Train gives each learner worker."""
    import torch.distributed as dist
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        for k, v in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(k, v)  # what Ray Train sets in each worker
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1)
    yield
