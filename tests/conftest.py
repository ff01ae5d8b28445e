"""Shared fixtures (the toy base model shipped with the package, one local Ray cluster) and the
test tiers:

- unit: no Ray, under a minute (``make test-unit``, ``pytest -m unit``); a unit test that
  starts Ray fails;
- integration: a local Ray cluster (the ``ray_local`` fixture, or marked ``e2e``), or marked
  ``integration`` where a test without Ray costs seconds: fresh interpreters, scoring
  processes held to their real time and memory limits, whole data corpora;
- slow: marked ``slow`` (``ray job submit``, real models, the comparison job).

Plain ``pytest`` runs unit and integration; ``make test`` all three."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

from helpers import NO_SHARED, SHARED, fake_hub, unpin_hub_hashes  # noqa: E402


@pytest.fixture(scope="session")
def relift_cache(tmp_path_factory):
    """The toy base model's folder (the shipped weights); the relift cache (converted models)
    is a fresh folder per session unless RELIFT_CACHE says otherwise."""
    cache = os.environ.get("RELIFT_CACHE") or str(tmp_path_factory.mktemp("relift_cache"))
    os.environ["RELIFT_CACHE"] = cache
    from relift_ray.data.toy.model import base_model_path
    return base_model_path()


RAY_FIXTURE = {"started": False}  # whether this session's ray_local has started Ray


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords or "integration" in item.keywords:
            continue
        ray = "ray_local" in item.fixturenames or "e2e" in item.keywords
        item.add_marker(pytest.mark.integration if ray else pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_ray(request):
    yield
    if "unit" not in request.node.keywords or RAY_FIXTURE["started"]:
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("a unit test started Ray: use the ray_local fixture (integration tier)")


@pytest.fixture(scope="session")
def ray_token(tmp_path_factory):
    """Token auth, as the jobs' own local clusters have it: a token of this session's (mode
    0600) for every cluster the tests start, in this process and in the processes they
    start (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``, in the environment)."""
    from relift_ray.runtime.cluster import new_token, use_token
    path = new_token(tmp_path_factory.mktemp("ray-auth"))
    use_token(path)
    return path


@pytest.fixture(scope="session")
def ray_local(relift_cache, ray_token):
    import ray
    ray.init(num_cpus=8, include_dashboard=False)  # Ray's processes inherit the environment
    RAY_FIXTURE["started"] = True
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """Every benchmark fetched from the fake hub (the shared data) into one folder."""
    from relift_ray.data import fetch as F
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
    unpin_hub_hashes(mp)
    lines: list = []
    from relift_ray.jobs.data_fetch import fetch_checked
    manifest = fetch_checked(to=tmp / "benchmarks", log=lines.append)
    mp.undo()
    return tmp / "benchmarks", manifest, lines, calls
