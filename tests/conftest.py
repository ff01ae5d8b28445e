"""Shared fixtures: the toy base model (shipped with the package), one local Ray cluster."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from helpers import NO_SHARED, SHARED, fake_hub  # noqa: E402


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
    ray.init(num_cpus=8, include_dashboard=False)  # Ray's processes inherit the environment
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """Every benchmark fetched from the fake hub (the shared data) into one folder."""
    from relift_ray import fetch as F
    if not SHARED.exists():
        # the fake hub serves the public math sets, which live outside the repo (never
        # copied in): without them beside the checkout there is nothing to serve
        pytest.skip(NO_SHARED)
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("fetch")
    calls: list = []
    snapshot, get = fake_hub(tmp, calls)
    mp.setattr(F, "hub_snapshot", snapshot)
    mp.setattr(F, "url_get", get)
    lines: list = []
    manifest = F.fetch(to=tmp / "benchmarks", log=lines.append)
    mp.undo()
    return tmp / "benchmarks", manifest, lines, calls
