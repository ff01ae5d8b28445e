"""Shared fixtures: the toy base model built once per session, one local Ray cluster."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(scope="session")
def relift_cache(tmp_path_factory):
    """Where the toy base model is cached; built once per session (about a minute)."""
    cache = os.environ.get("RELIFT_CACHE") or str(tmp_path_factory.mktemp("relift_cache"))
    os.environ["RELIFT_CACHE"] = cache
    from relift_ray.toy.base import build_base_model
    return build_base_model(cache)


@pytest.fixture(scope="session")
def ray_local(relift_cache):
    import ray
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=8, include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()
