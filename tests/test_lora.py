"""LoRA (model.lora): the learner trains the adapters alone with both optimizer states over
them, a sync sends the adapters and a generator holding them samples what the learner's merged
model samples, checkpoints hold the adapters and resume bit for bit, and a LoRA checkpoint
loads as one model (relift_ray.data.lora, relift_ray.data.registry)."""
import json
from pathlib import Path

import pytest
import torch
from test_checkpoint import AFTER, BEFORE, RL, _SchedulerState

from relift_ray.config import load_config
from relift_ray.data.lora import check_targets_of, is_adapter, read_adapter
from relift_ray.data.registry import resolve_model
from relift_ray.errors import ConfigError
from relift_ray.learner.checkpoint import load_learner, save_checkpoint
from relift_ray.records import AdapterWeights, Question, SamplingParams, TrainBatch


def _cfg(**over):
    o = {"model.dtype": "bfloat16", "train.zero_stage": 2, "algo.minibatches": 2,
         "algo.lr": 0.01, "algo.sft_lr": 0.003, "algo.max_new_tokens": 4,
         "cluster.num_learners": 1, "model.lora.rank": 4, **over}
    return load_config(overrides=[f"{k}={v}" for k, v in o.items()])


def _learner(path, **over):
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    single_process_group()
    return Learner(_cfg(**over), path, world=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random Llama with the toy tokenizer's vocabulary (the checkpoint tests' batches
    use ids below 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from relift_ray.data.toy.tokenizer import build_tokenizer
    path = tmp_path_factory.mktemp("lora") / "base"
    torch.manual_seed(0)
    tok = build_tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                                 bos_token_id=2)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_config_checks_the_lora_fields():
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        _cfg(**{"model.lora.target_modules": "all-linear,q_proj"})
    with pytest.raises(ConfigError, match="generator.weight_sync=nccl"):
        _cfg(**{"generator.backend": "vllm", "cluster.use_gpu": "true",
                "generator.weight_sync": "nccl"})
    with pytest.raises(ConfigError, match="train.save_merged"):
        _cfg(**{"model.lora.rank": 0, "train.save_merged": "true"})
    with pytest.raises(ConfigError, match="model.lora.dropout"):
        _cfg(**{"model.lora.dropout": 1.0})


def test_a_target_module_the_model_lacks_is_named(base):
    with pytest.raises(ConfigError, match=r"model.lora.target_modules: 'qkv_proj' is no "
                                          r"module of .*q_proj"):
        check_targets_of(base, ["q_proj", "qkv_proj"])
    check_targets_of(base, ["q_proj", "v_proj"])  # both exist
    for name, what in (("lm_head", "lm_head"), ("embed_tokens", "model.embed_tokens"),
                       ("mlp", "model.layers.0.mlp")):  # the head, an embedding, a block
        with pytest.raises(ConfigError, match=f"matches {what}, which is not a linear layer"):
            check_targets_of(base, [name])
    with pytest.raises(ConfigError, match="'qkv_proj'"):  # the learner checks too
        _learner(base, **{"model.lora.target_modules": "qkv_proj"})


def test_only_the_adapters_train_and_both_phases_hold_them_alone(base):
    learner = _learner(base)
    module = learner.engine.module
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    n_opt = sum(p.numel() for g in learner.opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters()
              if not p.requires_grad}
    lora_before = learner.adapter_weights().tensors
    for batch in BEFORE:  # RL and SFT steps
        m = learner.train_step(batch)
        assert m["learner_updates"] == 3 and m["sft/sft_grad_norm"] > 0
    for n, p in module.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen[n]), f"{n}: a frozen base weight moved"
    lora_after = learner.adapter_weights().tensors
    assert lora_after.keys() == lora_before.keys()
    assert any(not torch.equal(lora_after[k], v) for k, v in lora_before.items())
    for phase in ("rl", "sft"):
        state = learner.opt.state if learner.opt.phase == phase \
            else learner.opt.phase_state[phase]
        sizes = sorted(s["exp_avg"].numel() for s in state.values())
        assert sum(sizes) == n_opt, phase  # ZeRO's flat partition of the adapters alone


def test_merged_weights_are_peft_merge_and_unload(base):
    import copy
    learner = _learner(base, **{"model.dtype": "float32", "train.zero_stage": 0})
    learner.train_step(BEFORE[0])
    merged = learner.full_state_dict()
    want = copy.deepcopy(learner.engine.module).merge_and_unload().state_dict()
    assert merged.keys() == want.keys()
    assert all(torch.allclose(merged[k], want[k], atol=1e-6) for k in want)
    # the learner's own weights were not touched by merging
    assert any(".base_layer." in n for n, _ in learner.engine.module.named_parameters())


def _greedy(gen):
    qs = [Question(id=str(i), prompt=p, answer="") for i, p in enumerate(["12+3=", "7*8=", "9"])]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    return [c[0].response_ids for c in gen.generate(qs, params)]


def test_an_adapter_sync_gives_the_generator_the_learners_merged_model(base):
    from relift_ray.learner.weight_sync import InProcessPublisher
    from relift_ray.rollout.hf import HFGenerator
    learner = _learner(base, **{"model.dtype": "float32", "train.zero_stage": 0})
    learner.train_step(BEFORE[0])
    with torch.no_grad():  # large adapters, so that the policy surely differs from the base
        g = torch.Generator().manual_seed(3)
        for n, p in learner.engine.module.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g))
    adapter_gen, merged_gen, base_gen = (HFGenerator(base, threads=1) for _ in range(3))
    pub = InProcessPublisher([adapter_gen])
    pub.publish(learner, 1)
    assert adapter_gen.get_version() == 1
    full_bytes = sum(v.numel() * v.element_size() for v in learner.full_state_dict().values())
    assert 0 < pub.sent_bytes == learner.adapter_weights().nbytes < full_bytes / 2
    merged_gen.load_weights(1, learner.full_state_dict())
    want = _greedy(merged_gen)
    assert _greedy(adapter_gen) == want
    assert _greedy(base_gen) != want  # the adapters changed what the model says
    adapter_gen.load_base()  # the plain base again
    assert _greedy(adapter_gen) == _greedy(base_gen)
    # model.lora.sync=merged: the same publisher sends the merged model
    merged_cfg = _learner(base, **{"model.dtype": "float32", "train.zero_stage": 0,
                                   "model.lora.sync": "merged"})
    assert not isinstance(merged_cfg.sync_weights(), AdapterWeights)


@pytest.fixture(scope="module")
def run(base):
    """A bf16 LoRA learner trained two steps, checkpointed (with the merged copy), then
    continued: what a resumed run must reproduce."""
    a = _learner(base, **{"train.save_merged": "true"})
    for batch in BEFORE:
        a.train_step(batch)
    ckpt = Path(save_checkpoint(a, _SchedulerState(), step=2, rank=0, world=1,
                                model_path=base))
    at_save = a.full_state_dict()
    after = []
    for batch in AFTER:
        a.train_step(batch)
        after.append((a.full_state_dict(), a.adapter_weights().tensors))
    return {"ckpt": ckpt, "at_save": at_save, "after": after}


def test_the_checkpoint_holds_the_adapters_and_names_the_base(run, base):
    ckpt = run["ckpt"]
    model_states = torch.load(ckpt / "deepspeed/state/mp_rank_00_model_states.pt",
                              weights_only=False)["module"]
    assert model_states and all(".lora_" in k for k in model_states)
    meta = json.loads((ckpt / "deepspeed/learner_rank0.json").read_text())
    assert meta["lora"]["r"] == 4 and meta["lora"]["base"] == "toy"
    assert is_adapter(ckpt / "policy")
    assert json.loads((ckpt / "policy/relift_base.json").read_text()) == \
        {"model.path": "toy", "path": base, "dtype": "bfloat16"}
    assert read_adapter(ckpt / "policy").config["target_modules"] == \
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_a_lora_run_resumes_bit_for_bit(run, base):
    b = _learner(base)
    load_learner(b, run["ckpt"], rank=0, world=1)
    assert all(torch.equal(b.full_state_dict()[k], v) for k, v in run["at_save"].items())
    for batch, (want, want_lora) in zip(AFTER, run["after"]):
        b.train_step(batch)
        got = b.adapter_weights().tensors
        assert all(torch.equal(got[k], v) for k, v in want_lora.items())
        assert all(torch.equal(b.full_state_dict()[k], v) for k, v in want.items())


def test_a_lora_checkpoint_does_not_resume_another_run(run, base):
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    single_process_group()
    full = Learner(_cfg(**{"model.lora.rank": 0}), base, world=1)
    with pytest.raises(ValueError, match="written by LoRA r=4.*this run is a full fine-tune"):
        load_learner(full, run["ckpt"], rank=0, world=1)
    with pytest.raises(ValueError, match="this run is LoRA r=8"):
        load_learner(_learner(base, **{"model.lora.rank": 8}), run["ckpt"], rank=0, world=1)


def test_a_lora_checkpoint_loads_as_one_model(run, base, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM
    monkeypatch.setenv("RELIFT_CACHE", str(tmp_path / "cache"))
    ckpt = run["ckpt"]
    # with train.save_merged the checkpoint's merged/ copy; an adapter folder alone is merged
    # once into the cache
    assert resolve_model(str(ckpt)) == resolve_model(str(ckpt / "policy")) == \
        str(ckpt / "merged")
    import shutil
    policy = tmp_path / "policy"
    shutil.copytree(ckpt / "policy", policy)
    merged_dir = resolve_model(str(policy), log=lambda *_: None)
    assert merged_dir.startswith(str(tmp_path / "cache"))
    assert resolve_model(str(policy)) == merged_dir  # merged once
    for folder in (ckpt / "merged", Path(merged_dir)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
        sd = model.state_dict()
        assert sd.keys() == run["at_save"].keys()
        bad = [k for k, v in run["at_save"].items() if not torch.equal(sd[k], v)]
        assert not bad, (folder, bad)
    # the base recorded by path moved away: found again by its model.path when named...
    (policy / "relift_base.json").write_text(json.dumps({"model.path": base,
                                                         "path": "/nonexistent/base"}))
    assert Path(resolve_model(str(policy))).exists()
    # ...and an error naming both when it cannot be
    (policy / "relift_base.json").write_text(json.dumps({"model.path": "/gone/base",
                                                         "path": "/gone/base"}))
    with pytest.raises(Exception, match="LoRA adapter whose base model"):
        resolve_model(str(policy))


def test_rl_only_steps_leave_the_sft_state_empty(base):
    learner = _learner(base)
    learner.train_step(TrainBatch(step=1, rl=RL))
    assert not learner.opt.phase_state["sft"]


@pytest.mark.parametrize("stage", [0, 3])
def test_a_lora_run_resumes_bit_for_bit_under_zero_0_and_3(base, stage, tmp_path):
    from relift_ray.learner.checkpoint import save_learner
    a = _learner(base, **{"train.zero_stage": stage})
    for batch in BEFORE:
        a.train_step(batch)
    save_learner(a, tmp_path, rank=0, world=1)
    a.train_step(AFTER[0])
    want = a.adapter_weights().tensors
    b = _learner(base, **{"train.zero_stage": stage})
    load_learner(b, tmp_path, rank=0, world=1)
    b.train_step(AFTER[0])
    got = b.adapter_weights().tensors
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_the_old_policy_log_probs_are_taken_without_lora_dropout(base):
    from relift_ray.learner.forward import to_tensors
    learner = _learner(base, **{"model.lora.dropout": 0.5, "model.dtype": "float32"})
    with torch.no_grad():  # adapters that matter, so that dropping their input shows
        for n, p in learner.engine.module.named_parameters():
            if ".lora_B." in n:
                p.fill_(0.5)
    t = to_tensors(list(RL), 0, "cpu")

    def logp():
        with torch.no_grad():
            return learner._logprobs(t)[0]
    assert not torch.equal(logp(), logp())  # training mode: a fresh dropout mask each pass
    with learner._without_dropout():
        assert torch.equal(logp(), logp())
    assert learner.engine.module.training  # back to training mode


def test_a_lora_checkpoint_does_not_resume_on_other_base_weights(run, base, tmp_path):
    import shutil
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    conf = json.loads((other / "config.json").read_text())
    conf["initializer_range"] = 0.5  # another model under the same model.path
    (other / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="base_fingerprint"):
        load_learner(_learner(str(other)), run["ckpt"], rank=0, world=1)


def test_an_adapter_whose_base_is_itself_is_an_error(run, tmp_path):
    import shutil

    from relift_ray.data.registry import ModelNotFound
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run["ckpt"] / "policy", ckpt / "policy")
    (ckpt / "policy/relift_base.json").write_text(json.dumps(
        {"model.path": str(ckpt), "path": "/gone/base", "dtype": "bfloat16"}))
    with pytest.raises(ModelNotFound, match="resolves back to the adapter itself"):
        resolve_model(str(ckpt))


def test_adapter_folders_of_ended_engines_are_removed(tmp_path, monkeypatch):
    """A vLLM engine's adapter folder outlives its killed actor; the next engine removes the
    folders whose process is gone, and leaves a live one's."""
    import os
    import subprocess
    import sys
    import tempfile

    from relift_ray.rollout.vllm_engine import adapter_folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = tmp_path / f"relift-lora-{int(ended.stdout)}-abc"
    (gone / "20").mkdir(parents=True)
    live = tmp_path / f"relift-lora-{os.getppid()}-def"
    live.mkdir()
    other = tmp_path / "relift-lora-notapid"
    other.mkdir()
    new = adapter_folder()
    assert not gone.exists() and live.exists() and other.exists()
    assert os.path.basename(new).startswith(f"relift-lora-{os.getpid()}-")
    assert os.path.dirname(new) == str(tmp_path)
