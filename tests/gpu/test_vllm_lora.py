"""vLLM's LoRA on CUDA: a LoRA run's adapters (model.lora.sync=adapter) loaded into a GPU
engine started with ``lora_rank``, against the merged model the learner's policy is.

The CPU build's test (tests/test_vllm_cpu.py) asks for equal greedy output in fp32. Here the
engine runs in bf16 with vLLM's LoRA kernels (base and adapter computed apart), the reference
with the adapter merged: the checks allow for bf16 rounding and hold a stale policy to a far
larger gap."""
import pytest
import torch

pytestmark = pytest.mark.gpu

vllm = pytest.importorskip("vllm", reason="the vLLM backend needs vLLM: pip install .[gpu]")

from helpers import sampler_agreement  # noqa: E402

from relift_ray.data.lora import adapter_weights, merged_state_dict, wrap  # noqa: E402
from relift_ray.data.toy import task  # noqa: E402
from relift_ray.records import SamplingParams  # noqa: E402

GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=40)


@pytest.fixture(scope="module")
def gen(toy_model):
    from relift_ray.rollout.vllm_engine import VLLMGenerator
    g = VLLMGenerator(toy_model, dtype="bfloat16", gpu_memory_utilization=0.15,
                      enforce_eager=True, max_model_len=128, lora_rank=8)
    yield g
    del g


def _questions(levels=(2, 3, 4), k=8):
    return [q for level in levels for q in task.make_questions("test", (level,))[:k]]


def _policy(toy_model, seed):
    """A LoRA learner's policy after an update: PEFT's rank-8 adapters on every linear layer
    of the toy model (bf16 on the GPU), B drawn from ``seed`` (a fresh adapter's B is 0)."""
    from transformers import AutoModelForCausalLM

    from relift_ray.config import LoraConfig
    model = AutoModelForCausalLM.from_pretrained(toy_model, dtype=torch.bfloat16).cuda()
    peft_model = wrap(model, LoraConfig(rank=8, alpha=16), toy_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return peft_model


def _merged(toy_model, peft_model):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(toy_model, dtype=torch.bfloat16).cuda()
    model.load_state_dict(merged_state_dict(peft_model), strict=False)
    return model.eval()


def _greedy(gen, questions):
    return [tuple(g[0].response_ids) for g in gen.generate(questions, GREEDY)]


def _greedy_hf(model, tokenizer, questions):
    out = []
    for q in questions:
        ids = tokenizer(q.prompt, add_special_tokens=False, return_tensors="pt").input_ids.cuda()
        with torch.no_grad():
            seq = model.generate(ids, max_new_tokens=40, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
        out.append(tuple(seq[0, ids.shape[1]:].tolist()))
    return out


def _same_until_eos(a, b, eos):
    """Equal greedy answers: the same tokens up to and with the first EOS (vLLM stops there,
    transformers' generate too, for a batch of one)."""
    cut = lambda r: r[:r.index(eos) + 1] if eos in r else r  # noqa: E731
    return cut(a) == cut(b)


def test_adapter_sync_gives_the_merged_models_policy(gen, toy_model):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(toy_model)
    qs = _questions()
    base = _greedy(gen, qs)
    for version, seed in ((1, 3), (2, 4)):
        peft_model = _policy(toy_model, seed)
        merged = _merged(toy_model, peft_model)
        stale, _ = sampler_agreement(gen, merged, qs[:8])  # the engine still has the old adapter
        weights = adapter_weights(peft_model)
        full = sum(v.numel() * v.element_size() for v in merged.state_dict().values())
        print(f"version {version}: adapters {weights.nbytes / 2**20:.2f} MiB, "
              f"model {full / 2**20:.1f} MiB")
        assert all(".lora_A." in k or ".lora_B." in k for k in weights.tensors)
        assert weights.nbytes < 0.25 * full  # rank 8 on a model of width 64
        assert gen.load_weights(version, weights) == version
        after, comps = sampler_agreement(gen, merged, qs[:8])
        print(f"version {version}: stale {stale}, after the sync {after}")
        assert gen.get_version() == version and {c.weight_version for c in comps} == {version}
        assert after["logprob_abs_diff_mean"] < 0.1
        assert stale["logprob_abs_diff_mean"] > 3 * after["logprob_abs_diff_mean"]
        got = _greedy(gen, qs)
        ref = _greedy_hf(merged, tok, qs)
        same = sum(_same_until_eos(a, b, tok.eos_token_id) for a, b in zip(got, ref))
        print(f"version {version}: greedy answers equal to the merged model's: {same}/{len(qs)}")
        assert same >= 0.9 * len(qs)
        assert got != base
        del peft_model, merged
    assert gen.load_base() == 0
    assert gen.lora_request is None
    assert _greedy(gen, qs) == base
