"""The config tree: the paper's defaults, overrides, and errors that name the field."""
from pathlib import Path

import pytest

from relift_ray.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "jobs" / "configs").glob("*.yaml"))


def test_paper_defaults_are_the_released_algorithm():
    a = load_config(overrides=[]).algo
    assert (a.batch_size, a.n_samples, a.temperature, a.top_p, a.max_new_tokens) == \
        (128, 8, 1.0, 1.0, 8192)
    assert (a.lr, a.sft_lr, a.weight_decay, a.grad_clip, a.sft_grad_clip) == \
        (1e-6, 1e-6, 0.01, 0.7, 1.0)
    assert (a.rl_loss, a.entropy_coef, a.minibatches, a.buffer_size, a.mode) == \
        ("relift", 0.001, 2, 128, "relift")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    assert isinstance(load_config(path), RunConfig)


def test_dotted_overrides_and_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: toy\nalgo:\n  buffer_size: 8\n")
    cfg = load_config(f, ["algo.lr=1e-5", "train.steps=3", "algo.rl_loss=grpo"])
    assert cfg.algo.buffer_size == 8 and cfg.algo.lr == 1e-5 and cfg.train.steps == 3
    assert cfg.algo.rl_loss == "grpo"
    assert cfg.algo.batch_size == 16  # from the toy preset


@pytest.mark.parametrize("override, field", [
    ("algo.mode=ppo", "algo.mode"),
    ("algo.batch_size=0", "algo.batch_size"),
    ("algo.lr=fast", "algo.lr"),
    ("algo.temperature=-1", "algo.temperature"),
    ("algo.top_p=1.5", "algo.top_p"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("algo.bogus=1", "algo.bogus"),
    ("cluster.use_gpu=maybe", "cluster.use_gpu"),
    ("train.steps=2.5", "train.steps"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_invariant_errors_say_why():
    with pytest.raises(ConfigError, match="algo.buffer_size=1: must be >= cluster.num_learners"):
        load_config(overrides=["algo.buffer_size=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("preset: nope\n")
    with pytest.raises(ConfigError, match="preset='nope'"):
        load_config(f)
    f.write_text("algo: [1, 2]\n")
    with pytest.raises(ConfigError, match="algo: expected a mapping"):
        load_config(f)


def test_train_job_rejects_a_bad_value_before_starting_anything():
    import subprocess
    import sys
    root = Path(__file__).parent.parent
    r = subprocess.run([sys.executable, str(root / "jobs" / "train.py"), "algo.n_samples=0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "error: algo.n_samples=0: must be > 0" in r.stderr


def test_compare_job_rejects_bad_values_before_starting_anything():
    import subprocess
    import sys
    root = Path(__file__).parent.parent
    for arg, message in (("compare.methods=rl,dpo", "compare.methods: unknown method 'dpo'"),
                         ("compare.seeds=[]", "compare.seeds=[]"),
                         ("compare.sft_then_rl_fraction=1.5", "must be in (0, 1)")):
        r = subprocess.run([sys.executable, str(root / "jobs" / "compare.py"), arg],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (arg, r.stderr[-2000:])
        assert message in r.stderr, (arg, r.stderr[-2000:])


def test_ablation_values_are_checked():
    with pytest.raises(ConfigError, match="algo.sft_trigger='sometimes': must be one of"):
        load_config(overrides=["algo.sft_trigger=sometimes"])
    with pytest.raises(ConfigError, match="algo.sft_first_steps=0: mode=sft_then_rl needs"):
        load_config(overrides=["algo.mode=sft_then_rl"])
    cfg = load_config(overrides=["algo.mode=sft_then_rl", "algo.sft_first_steps=30"])
    assert [cfg.is_sft_step(s) for s in (1, 30, 31)] == [True, True, False]
