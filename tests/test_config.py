"""The config tree: the paper's defaults, overrides, and errors that name the field."""
from pathlib import Path

import pytest

from relift_ray.config import CONFIGS_DIR, RunConfig, find_config, load_config
from relift_ray.errors import ConfigError

CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))
TOY = CONFIGS_DIR / "toy.yaml"


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


def test_dotted_overrides_and_extends_toy(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"extends: {TOY}\nalgo:\n  buffer_size: 8\n")
    cfg = load_config(f, ["algo.lr=1e-5", "train.steps=3", "algo.rl_loss=grpo"])
    assert cfg.algo.buffer_size == 8 and cfg.algo.lr == 1e-5 and cfg.train.steps == 3
    assert cfg.algo.rl_loss == "grpo"
    assert cfg.algo.batch_size == 16  # from toy.yaml


def test_a_shipped_config_is_found_by_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere: the shipped configs travel with the package
    assert find_config("toy_rl") == CONFIGS_DIR / "toy_rl.yaml"
    assert find_config("toy_rl.yaml") == CONFIGS_DIR / "toy_rl.yaml"
    assert load_config("toy_rl").algo.mode == "rl"
    (tmp_path / "toy_rl.yaml").write_text("name: mine\n")  # a file of that name comes first
    assert load_config("toy_rl.yaml").name == "mine"
    with pytest.raises(ConfigError, match="config file nope does not exist .*toy_relift"):
        load_config("nope")


def test_output_dir_is_fixed_where_the_config_is_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["output_dir=out"])
    assert cfg.output_dir == str(tmp_path / "out")
    assert RunConfig.from_dict(cfg.to_dict()).output_dir == cfg.output_dir  # as actors get it


def test_the_cli_defaults_are_shipped_configs():
    from relift_ray.cli import DEFAULTS
    for name in DEFAULTS.values():
        assert (CONFIGS_DIR / f"{name}.yaml").exists()
        assert isinstance(load_config(name), RunConfig)


def test_each_choice_and_bound_is_declared_beside_its_field():
    import dataclasses

    from relift_ray import config
    assert not hasattr(config, "_CHOICES") and not hasattr(config, "PRESETS")
    algo = {f.name: f for f in dataclasses.fields(config.AlgoConfig)}
    assert algo["mode"].metadata["choices"][0] == "relift"  # the default comes first
    assert algo["batch_size"].metadata["bound"] == "> 0"
    assert algo["top_p"].metadata["bound"] == "in (0, 1]"


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
    ("train.kill=[dashboard@3]", "train.kill"),
    ("train.kill=[learner@0]", "train.kill"),
    ("cluster.generator_threads=-1", "cluster.generator_threads"),
    # numbers that are not finite: inf would pass a bound and break the code that uses it
    ("cluster.reward_timeout_s=inf", "cluster.reward_timeout_s=inf: must be a finite number"),
    ("algo.lr=nan", "algo.lr"),
    ("algo.clip_eps=.inf", "algo.clip_eps"),
    ("cluster.reward_memory_mb=-1", "cluster.reward_memory_mb"),
    # the run's folder is output_dir/name: one plain folder name
    ("name=..", "name='..': must be one folder name"),
    ("name=.", "name='.'"),
    ("name=a/b", "name='a/b'"),
    ("name=a\nb", "name="),
    ("name=", "name=''"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("[", r"\[")):
        load_config(overrides=[override])


def test_invariant_errors_say_why():
    with pytest.raises(ConfigError, match="algo.buffer_size=1: must be >= cluster.num_learners"):
        load_config(overrides=["algo.buffer_size=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("preset: toy\n")
    with pytest.raises(ConfigError, match="preset: is not a config field; .*extends: <file>"):
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


def test_a_bad_model_path_names_the_path_and_what_was_looked_for(tmp_path):
    import subprocess
    import sys
    root = Path(__file__).parent.parent
    r = subprocess.run([sys.executable, str(root / "jobs" / "train.py"),
                        "model.path=/nonexistent", f"output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: model.path=/nonexistent: no such folder (/nonexistent does not exist)" in r.stderr
    assert "toy, smollm2-135m" in r.stderr  # what it could have been
    assert not (tmp_path / "mlflow.db").exists()  # stopped before anything started
    (tmp_path / "empty").mkdir()
    from relift_ray.data.registry import ModelNotFound, resolve_model
    with pytest.raises(ModelNotFound, match=r"holds no model: looked for config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_a_vllm_max_model_len_beyond_the_model_stops_before_ray(tmp_path):
    """vLLM refuses a max_model_len beyond the model's positions (256 on the toy model's 128)
    deep in the engine actor's start-up traceback; the job says so in one line, before Ray."""
    import subprocess
    import sys
    root = Path(__file__).parent.parent

    def vllm_job(max_model_len: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(root / "jobs" / "train.py"),
                               "cluster.use_gpu=true", "generator.backend=vllm",
                               f"generator.max_model_len={max_model_len}",
                               "tracking.eval_before=start", f"output_dir={tmp_path}"],
                              capture_output=True, text=True, timeout=120, check=False)

    r = vllm_job(256)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert ("error: generator.max_model_len=256 is more than the model's "
            "max_position_embeddings=128") in r.stderr
    assert not (tmp_path / "mlflow.db").exists()
    from relift_ray.data.toy.model import base_model_path
    from relift_ray.runtime.topology import check_model_len
    check_model_len(128, base_model_path(), 112, "x")  # at the limit, 0 (the model's own),
    check_model_len(0, base_model_path(), 128, "x")  # and contexts that hold what is asked, pass
    # a context too small for the prompts and responses the config allows
    r = vllm_job(100)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert ("error: generator.max_model_len=100 holds fewer tokens than data.max_prompt_tokens "
            "+ algo.max_new_tokens (64 + 48) = 112") in r.stderr
    with pytest.raises(ConfigError, match=r"the model's max_position_embeddings=128 .* holds "
                                          r"fewer tokens than x = 200"):
        check_model_len(0, base_model_path(), 200, "x")


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


# ---------------------------------------------------------------- the paper's settings

PAPER_CONFIGS = {
    "paper.yaml": "RoadQAQ/Qwen2.5-Math-7B-16k-think",
    "paper_qwen_math_1_5b.yaml": "RoadQAQ/Qwen2.5-Math-1.5B-16k-think",
    "paper_qwen_7b.yaml": "RoadQAQ/Qwen2.5-7B-think",
    "paper_llama_8b.yaml": "meta-llama/Llama-3.1-8B",
}
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, model", PAPER_CONFIGS.items())
def test_paper_configs_load_and_carry_the_released_defaults(name, model):
    cfg = load_config(CONFIGS_DIR / name)
    a = cfg.algo
    assert cfg.model.path == model and cfg.model.dtype == "bfloat16"
    assert (a.mode, a.batch_size, a.n_samples, a.temperature) == ("relift", 128, 8, 1.0)
    assert (cfg.data.max_prompt_tokens, a.max_new_tokens) == (1024, 8192)
    assert (a.lr, a.sft_lr, a.buffer_size, a.grad_clip, a.sft_grad_clip) == (1e-6, 1e-6, 128, 0.7, 1.0)
    assert (a.rl_loss, a.entropy_coef, a.minibatches) == ("relift", 0.001, 2)
    assert cfg.data.system_prompt == "luffy" and cfg.data.answer_extraction == "after_think"
    assert cfg.data.train.startswith("hf://") and cfg.cluster.use_gpu
    assert cfg.name.startswith("paper-relift-")
    # the released reward's verdicts, demonstrations cut at 8,192 tokens, the released
    # scripts' SFT micro-batches (2 in the math-1.5b and Qwen2.5-7B scripts, 4 in math-7b's)
    assert cfg.data.verifier == "released" and cfg.data.max_demo_tokens == 8192
    assert a.sft_micro_batch_size == {"paper_qwen_math_1_5b.yaml": 2,
                                      "paper_qwen_7b.yaml": 2}.get(name, 4)
    assert a.sft_every == 8  # the paper's fixed schedule (sft_trigger=every_k)


def test_llama_think_template_renders_with_the_think_opening():
    from relift_ray.data.prompts import LUFFY_SYSTEM_PROMPT, load_chat_template, render_prompts
    from relift_ray.data.toy.tokenizer import build_tokenizer
    from relift_ray.records import Question

    cfg = load_config("paper_llama_8b")
    tok = build_tokenizer()
    load_chat_template(tok, cfg.data.chat_template)  # templates/..., shipped beside the configs
    (q,), _ = render_prompts([Question(id="a", prompt="1+1", answer="2",
                                       demo="<think>\nsum</think> \\boxed{2}")], tok, cfg.data)
    assert q.prompt.startswith(f"<bos><|start_header_id|>system<|end_header_id|>\n\n"
                               f"{LUFFY_SYSTEM_PROMPT}<|eot_id|>")
    assert q.prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert q.demo == "sum</think> \\boxed{2}"


def test_extends_merges_and_reports_bad_parents(tmp_path):
    (tmp_path / "base.yaml").write_text(f"extends: {TOY}\nname: base\n"
                                        f"algo: {{lr: 0.5, batch_size: 8}}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nalgo: {lr: 0.25}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.algo.lr, cfg.algo.batch_size, cfg.algo.max_new_tokens) == (
        "child", 0.25, 8, 48)
    (tmp_path / "orphan.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml: extends=nope.yaml: .* does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")


def test_text_overrides_stay_text():
    cfg = load_config(None, ["data.plain_template=Q: {prompt}\nA:", "algo.lr=2e-5",
                             "data.system_prompt=luffy"])
    assert cfg.data.plain_template == "Q: {prompt}\nA:" and cfg.algo.lr == 2e-5
    with pytest.raises(ConfigError, match=r"data.plain_template='Q:': must contain \{prompt\}"):
        load_config(None, ["data.plain_template=Q:"])


@pytest.mark.parametrize("overrides,message", [
    (["generator.backend=vllm", "generator.colocate=true"],
     "generator.colocate=True: vLLM on CPU"),
    (["generator.weight_sync=nccl"], "generator.weight_sync='nccl': needs generator.backend=vllm"),
    (["generator.dtype=bfloat16"], "generator.dtype='bfloat16': needs generator.backend=vllm"),
    (["generator.backend=vllm", "generator.weight_sync=ipc"],
     "generator.weight_sync='ipc': vLLM on CPU"),
    (["algo.max_staleness=1", "generator.backend=vllm", "cluster.use_gpu=true",
      "generator.weight_sync=ipc", "generator.colocate=true"],
     "algo.max_staleness=1 with generator.colocate=true: colocated engines sleep"),
    (["algo.max_staleness=-1"], "algo.max_staleness=-1: must be >= 0"),
    (["algo.max_staleness=2", "algo.mode=sft"], "mode=sft samples nothing"),
    (["algo.is_correction=clamp"], "algo.is_correction='clamp': must be one of"),
    (["generator.backend=vllm", "cluster.use_gpu=true", "generator.weight_sync=ipc"],
     "generator.weight_sync=ipc: needs generator.colocate=true"),
    (["generator.backend=vllm", "cluster.use_gpu=true", "generator.weight_sync=nccl",
      "generator.colocate=true"], "use weight_sync=ipc"),
    (["generator.backend=sglang"], "generator.backend='sglang': must be one of"),
    (["generator.gpu_memory_utilization=1.5"], r"generator.gpu_memory_utilization=1.5: must be in"),
])
def test_gpu_generator_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_gpu_generator_settings_that_go_together_load():
    cfg = load_config(overrides=["generator.backend=vllm", "cluster.use_gpu=true",
                                 "generator.weight_sync=ipc", "generator.colocate=true",
                                 "cluster.num_generators=2", "algo.is_correction=tis", "train.zero_stage=3",
                                 "train.gradient_checkpointing=true"])
    assert cfg.generator.colocate and cfg.algo.is_cap == 2.0 and cfg.train.zero_stage == 3


def _unread_fields(corpus: str) -> list[str]:
    """Config fields that no code reads as ``.<name>`` in ``corpus``."""
    import re

    from relift_ray.config import RunConfig
    return [key for key in RunConfig().flat()
            if not re.search(rf"\.{key.split('.')[-1]}\b", corpus)]


def test_every_declared_config_field_is_read_somewhere():
    """A field that nothing reads is a promise the code does not keep: implement it or remove
    it. Declarations and validation do not count as reading."""
    import re
    root = Path(__file__).resolve().parent.parent / "relift_ray"
    corpus = [p.read_text() for p in root.rglob("*.py") if p.name != "config.py"]
    config_src = (root / "config.py").read_text()
    # config.py's own readers (properties such as mlflow_uri and fields), without the field
    # declarations and without validate() and its checks, which read every field to check it
    config_src = re.sub(r"^    \w+: [^=\n]+ = .*$", "", config_src, flags=re.M)
    config_src = re.sub(r"\ndef (validate|_check_\w+)\(.*?\n(?=\S)", "\n", config_src, flags=re.S)
    corpus.append(config_src)
    assert _unread_fields("\n".join(corpus)) == []
    # and the check itself notices a field nobody reads
    assert "algo.is_cap" in _unread_fields("\n".join(corpus).replace(".is_cap", ".x"))


def test_train_kill_fires_once_per_run(tmp_path):
    from relift_ray import faults
    cfg = load_config(overrides=[f"output_dir={tmp_path}", "name=k",
                                 "train.kill=[generator@3,learner@5]"])
    assert faults.parse(cfg.train.kill) == [("generator", 3, "kill"), ("learner", 5, "kill")]
    assert not faults.due(cfg, "generator", 2) and not faults.due(cfg, "scheduler", 3)
    assert faults.due(cfg, "generator", 3) == "kill"
    assert not faults.due(cfg, "generator", 3)  # a restarted actor replaying step 3 goes on
    assert (tmp_path / "k.killed-generator-3").exists()
    # SIGSTOP: its own action and marker, beside a kill of the same actor at the same step
    cfg = load_config(overrides=[f"output_dir={tmp_path}", "name=s",
                                 "train.kill=[scheduler@2:stop,scheduler@2]"])
    assert faults.due(cfg, "scheduler", 2) == "stop"
    assert faults.due(cfg, "scheduler", 2) == "kill"
    assert not faults.due(cfg, "scheduler", 2)
    assert (tmp_path / "s.stopped-scheduler-2").exists()
    for bad, why in (("learner@3:stop", "only scheduler, generator, reward can be stopped"),
                     ("generator@3:pause", "expected <actor>@<step>")):
        with pytest.raises(ConfigError, match=why):
            load_config(overrides=[f"train.kill=[{bad}]"])


def test_the_learners_deadline_covers_the_schedulers_sampling_and_scoring():
    cfg = load_config()
    c = cfg.cluster
    assert c.batch_deadline_s > c.generate_deadline_s + c.score_deadline_s
    for key in ("batch_deadline_s", "validate_deadline_s"):
        with pytest.raises(ConfigError, match=rf"cluster.{key}=90: must be more than cluster"
                                              rf".generate_deadline_s \+ cluster"):
            load_config(overrides=["cluster.generate_deadline_s=60",
                                   "cluster.score_deadline_s=30", f"cluster.{key}=90"])
    from relift_ray.runtime.topology import collective_timeout_s
    cfg = load_config(overrides=["cluster.validate_deadline_s=9000"])
    assert collective_timeout_s(cfg) == 9060  # the other ranks wait as long as rank 0
