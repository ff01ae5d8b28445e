"""The transformers backend's own decode loop (``HFGenerator.decode``): the same tokens as
``model.generate`` where both are deterministic, rows dropped from the KV cache as they end
without changing anyone's tokens, and the nucleus drawn as ``model.generate`` draws it."""
import pytest
import torch

from relift_ray.records import Question, SamplingParams
from relift_ray.rollout import hf
from relift_ray.rollout.hf import HFGenerator, _draw

PROMPTS = ["Q: 2+3=", "Q: 47+5+8=", "Q: 12+30=", "Q: 27+5*2=", "Q: 9=", "Q: 31+4+2+6="]


@pytest.fixture(scope="module")
def gen(relift_cache):
    return HFGenerator(relift_cache, threads=1)


def _enc(gen, prompts):
    return gen.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_greedy_decode_is_model_generate(gen):
    """Left-padded prompts of different lengths whose answers end at different steps (so rows
    leave the cache mid-way): the same tokens as ``model.generate``, cut at each row's EOS."""
    enc = _enc(gen, PROMPTS)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=40)
    tokens, _, lengths = gen.decode(enc["input_ids"], enc["attention_mask"], params)
    assert len(set(lengths.tolist())) > 1  # rows really ended at different steps
    ref = gen.model.generate(**enc, do_sample=False, max_new_tokens=40,
                             pad_token_id=gen.tokenizer.pad_token_id,
                             eos_token_id=gen.tokenizer.eos_token_id)
    width = enc["input_ids"].shape[1]
    for row, n in enumerate(lengths.tolist()):
        want = hf.trim_ids(ref[row, width:].tolist(), gen.tokenizer.eos_token_id,
                        gen.tokenizer.pad_token_id)
        assert tokens[row, :n].tolist() == want
        assert (tokens[row, n:] == gen.tokenizer.pad_token_id).all()


def test_dropping_ended_rows_changes_no_tokens(gen, monkeypatch):
    """The same greedy decode with a cache that keeps every row (ended rows step on padding):
    identical tokens and log-probs, so shrinking the cache is only a saving."""
    enc = _enc(gen, PROMPTS)
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=40, logprobs=True)
    tokens, lps, lengths = gen.decode(enc["input_ids"], enc["attention_mask"], params)

    from transformers import DynamicCache

    class NoShrink(DynamicCache):  # a cache that cannot drop rows
        batch_select_indices = property(lambda self: (_ for _ in ()).throw(AttributeError))

    monkeypatch.setattr(hf, "_new_cache", lambda model: NoShrink())
    tokens2, lps2, lengths2 = gen.decode(enc["input_ids"], enc["attention_mask"], params)
    assert torch.equal(lengths, lengths2) and torch.equal(tokens, tokens2)
    assert torch.allclose(lps, lps2, atol=1e-5)
    beyond = torch.arange(40)[None] >= lengths[:, None]
    assert (lps[beyond] == 0).all() and (lps[~beyond] < 0).all()
    # sampled, rows that ended keep stepping (on padding) in this path: a later EOS drawn
    # there must not move the row's end
    hot = SamplingParams(n=4, temperature=2.0, max_new_tokens=30, seed=0)
    torch.manual_seed(0)
    tokens, _, lengths = gen.decode(enc["input_ids"], enc["attention_mask"], hot)
    eos, pad = gen.tokenizer.eos_token_id, gen.tokenizer.pad_token_id
    for row, n in enumerate(lengths.tolist()):
        ids = tokens[row].tolist()
        assert eos not in ids[:n - 1] and (ids[n - 1] == eos or n == 30)
        assert all(x == pad for x in ids[n:])


def test_a_prompt_is_read_once_for_its_n_rows(gen):
    """n responses per prompt: the prefill reads each prompt once and copies its keys and
    values to its n rows; the tokens and log-probs are those of the n rows each reading it."""
    enc = _enc(gen, PROMPTS)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=30, logprobs=True)
    seen = []
    hook = gen.model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        torch.manual_seed(3)
        tokens, lps, lengths = gen.decode(enc["input_ids"], enc["attention_mask"], params)
    finally:
        hook.remove()
    assert seen[0] == (len(PROMPTS), enc["input_ids"].shape[1])  # the prompts, once
    assert seen[1] == (len(PROMPTS) * 4, 1)  # then a token per row
    one = SamplingParams(n=1, temperature=1.0, max_new_tokens=30, logprobs=True)
    torch.manual_seed(3)
    tokens1, lps1, lengths1 = gen.decode(enc["input_ids"].repeat_interleave(4, 0),
                                         enc["attention_mask"].repeat_interleave(4, 0), one)
    assert torch.equal(lengths, lengths1) and torch.equal(tokens, tokens1)
    assert torch.allclose(lps, lps1, atol=1e-5)
    assert len(set(map(tuple, tokens.tolist()))) > len(PROMPTS)  # the n rows really differ


def test_sampled_responses_end_with_eos_or_at_the_limit(gen):
    qs = [Question(str(i), p, "") for i, p in enumerate(PROMPTS)]
    params = SamplingParams(n=4, temperature=1.5, max_new_tokens=10, seed=3, logprobs=True)
    out = gen.generate(qs, params)
    eos = gen.tokenizer.eos_token_id
    ends = 0
    for q, group in zip(qs, out):
        assert [c.question_id for c in group] == [q.id] * 4
        for c in group:
            ids = list(c.response_ids)
            assert eos not in ids[:-1] and len(c.logprobs) == len(ids)
            assert ids[-1] == eos or len(ids) == 10
            ends += ids[-1] == eos
    assert 0 < ends < len(qs) * 4  # both kinds occur at this temperature and limit
    again = gen.generate(qs, params)  # the seed fixes the draws
    assert [c.response_ids for g in again for c in g] == \
        [c.response_ids for g in out for c in g]


def test_nucleus_keeps_the_top_tokens_reaching_top_p():
    """model.generate's top_p: sort, drop the low tail whose mass stays within 1 - top_p, keep
    the most likely token always; draw from the renormalized rest."""
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]]))
    torch.manual_seed(0)
    draws = torch.stack([_draw(logits, SamplingParams(temperature=1.0, top_p=0.6))
                         for _ in range(3000)])
    # row 0: the tail 0.2 (<= 0.4) goes, 0.3 and 0.5 stay; row 1: only 0.8 stays;
    # row 2: the tail 0.33 goes (cumulative 0.33 <= 0.4), 0.34 and the other 0.33 stay
    assert set(draws[:, 0].tolist()) == {1, 2}
    assert set(draws[:, 1].tolist()) == {2}
    assert set(draws[:, 2].tolist()) == {0, 1} or set(draws[:, 2].tolist()) == {0, 2}
    share = (draws[:, 0] == 1).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.03  # renormalized over the kept tokens
    greedy = _draw(logits, SamplingParams(temperature=0.0))
    assert greedy.tolist() == [1, 2, 0]
    hot = torch.stack([_draw(logits[:1], SamplingParams(temperature=1.0)) for _ in range(3000)])
    assert abs((hot == 0).float().mean().item() - 0.2) < 0.03  # top_p=1: the whole softmax


def test_a_linear_attention_model_keeps_its_rows_and_decodes_as_generate(relift_cache, tmp_path):
    """A hybrid model (Qwen3-Next: linear-attention layers hold a recurrent state that
    batch_select_indices does not drop): no row leaves its cache, ended rows step on padding,
    and greedy tokens are still ``model.generate``'s."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "qwen3_next", vocab_size=27, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=32,
        linear_value_head_dim=32, moe_intermediate_size=64, shared_expert_intermediate_size=64,
        num_experts=2, num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{relift_cache}/{name}", tmp_path / name)
    gen = HFGenerator(str(tmp_path), threads=1)
    enc = _enc(gen, PROMPTS)
    cache = hf._new_cache(gen.model)
    gen.model(**enc, past_key_values=cache, use_cache=True)
    assert not hf._can_drop_rows(cache)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    tokens, _, lengths = gen.decode(enc["input_ids"], enc["attention_mask"], params)
    assert len(set(lengths.tolist())) > 1  # some rows end early and step on padding
    ref = gen.model.generate(**enc, do_sample=False, max_new_tokens=12,
                             pad_token_id=gen.tokenizer.pad_token_id,
                             eos_token_id=gen.tokenizer.eos_token_id)
    width, eos = enc["input_ids"].shape[1], gen.tokenizer.eos_token_id
    for row, n in enumerate(lengths.tolist()):
        want = ref[row, width:].tolist()  # a random model also samples the pad id: kept
        want = want[:want.index(eos) + 1] if eos in want else want
        assert tokens[row, :n].tolist() == want
