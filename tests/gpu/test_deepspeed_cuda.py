"""DeepSpeed on CUDA: ZeRO-2 and ZeRO-3 with bf16 and gradient checkpointing, the parameter
gathering for weight export under ZeRO-3, and the HF-format copy saved with a checkpoint."""
import pytest
import torch

pytestmark = pytest.mark.gpu

deepspeed = pytest.importorskip("deepspeed")

from relift_ray.config import RunConfig  # noqa: E402
from relift_ray.data.toy import task  # noqa: E402
from relift_ray.learner.learner import Learner  # noqa: E402
from relift_ray.learner.weight_sync import named_weights  # noqa: E402
from relift_ray.records import Sample  # noqa: E402


def _cfg(stage):
    cfg = RunConfig()
    cfg.cluster.use_gpu = True
    cfg.model.dtype = "bfloat16"
    cfg.train.zero_stage = stage
    cfg.train.gradient_checkpointing = True
    cfg.algo.lr = cfg.algo.sft_lr = 1e-3
    cfg.algo.max_new_tokens = 64
    return cfg


def _samples(tok_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_path)
    out = []
    for i, q in enumerate(task.make_questions("train", (1, 2))[:8]):
        p = tok.encode(q.prompt, add_special_tokens=False)
        r = tok.encode(q.demo, add_special_tokens=False) + [tok.eos_token_id]
        out.append(Sample(tuple(p), tuple(r), 1.0 if i % 2 else -1.0, q.id))
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_bf16_gradient_checkpointing_updates_and_exports(stage, toy_model, dist_world1,
                                                             tmp_path):
    from transformers import AutoModelForCausalLM
    learner = Learner(_cfg(stage), toy_model, world=1)
    assert learner.engine.module.is_gradient_checkpointing
    before = learner.full_state_dict()
    samples = _samples(toy_model)
    rl = learner.rl_update(samples)
    sft = learner.sft_update(samples)
    assert all(torch.isfinite(torch.tensor(v)) for v in (rl["rl/loss"], sft["sft/sft_loss"]))
    after = learner.full_state_dict()
    assert set(after) == set(before)
    changed = sum(not torch.equal(before[k], after[k]) for k in after)
    assert changed > len(after) // 2, f"only {changed} of {len(after)} tensors changed"
    # weight export: whole tensors even where ZeRO-3 keeps 1/world of each on a rank
    ref = AutoModelForCausalLM.from_pretrained(toy_model)
    shapes = {k: tuple(v.shape) for k, v in ref.named_parameters()}
    got = {k: tuple(v.shape) for k, v in named_weights(learner.engine.module, zero3=stage == 3)}
    assert got == shapes
    # the HF-format copy a checkpoint carries, reloaded by from_pretrained
    with learner.gathered():
        learner.engine.module.save_pretrained(tmp_path / "policy")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", dtype=torch.bfloat16)
    for k, v in back.state_dict().items():
        if k in after:
            assert torch.equal(v, after[k].to(v.dtype)), k
