"""Shared fixtures: the toy base model (shipped with the package), one local Ray cluster."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(scope="session")
def relift_cache(tmp_path_factory):
    """The toy base model's folder (the shipped weights); the relift cache (converted models)
    is a fresh folder per session unless RELIFT_CACHE says otherwise."""
    cache = os.environ.get("RELIFT_CACHE") or str(tmp_path_factory.mktemp("relift_cache"))
    os.environ["RELIFT_CACHE"] = cache
    from relift_ray.toy.base import base_model_path
    return base_model_path()


@pytest.fixture(scope="session")
def ray_local(relift_cache):
    import ray
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=8, include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()
