"""The package as a wheel installs it: every module, the shipped configs and the toy base
model come along, and ``relift train`` with no --config runs the toy job from a folder
outside the checkout (slow tier: it builds the wheel and starts Ray)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True,
                   timeout=600)
    (path,) = out.glob("relift_ray-*.whl")
    return path


def test_the_wheel_holds_every_module_config_and_the_toy_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "relift_ray"
    for f in package.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            assert str(f.relative_to(ROOT)) in names, f
    assert "relift_ray/configs/toy_relift.yaml" in names
    assert "relift_ray/data/toy/base_model/model.safetensors" in names


def test_an_installed_wheel_runs_the_toy_job_without_a_config(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"  # no checkout here: only the installed package
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "RELIFT_CACHE": str(tmp_path / "cache")}
    code = ("import relift_ray, sys; from relift_ray.cli import main; "
            "print('package', relift_ray.__file__, flush=True); "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "train", f"output_dir={work / 'runs'}",
                        "train.steps=2", "train.checkpoint_every=2", "tracking.eval_every=0",
                        "tracking.eval_before=none", "data.max_test_questions=16",
                        "cluster.dashboard=false"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"package {site / 'relift_ray' / '__init__.py'}" in r.stdout  # not the checkout
    assert "run 'toy-relift': mode relift" in r.stdout  # the shipped default config
    assert str(site / "relift_ray" / "data" / "toy" / "base_model") in r.stdout
    assert "[step 2/2]" in r.stdout
