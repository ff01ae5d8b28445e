"""Learner pieces that need no cluster: the two-phase optimizer and the batch tensors."""
import math

import pytest
import torch

from relift_ray.learner.forward import to_tensors
from relift_ray.learner.learner import TwoPhaseAdamW
from relift_ray.records import Sample


def _opt(p):
    return TwoPhaseAdamW([p], {"rl": {"lr": 0.1, "weight_decay": 0.0},
                               "sft": {"lr": 0.01, "weight_decay": 0.0}})


def test_two_phases_have_their_own_adam_state_and_lr():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = _opt(p)
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    opt.step()  # RL: Adam's first step moves each weight by lr * sign(grad)
    assert p.detach().tolist() == pytest.approx([-0.1, 0.1, -0.1], abs=1e-6)
    opt.set_phase("sft")
    p.grad = torch.tensor([-5.0, 5.0, -5.0])
    opt.step()  # SFT: a fresh state, so again a first step, with the SFT lr
    assert p.detach().tolist() == pytest.approx([-0.09, 0.09, -0.09], abs=1e-6)
    opt.set_phase("rl")
    assert opt.state[p]["step"].item() == 1  # the RL state was kept aside, untouched
    assert opt.param_groups[0]["lr"] == 0.1


def test_both_states_round_trip():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = _opt(p)
    for phase in ("rl", "sft", "sft"):
        opt.set_phase(phase)
        p.grad = torch.ones(2)
        opt.step()
    saved = opt.both_state_dicts()
    q = torch.nn.Parameter(p.detach().clone())
    other = _opt(q)
    other.load_both_state_dicts(saved)
    for phase, steps in (("rl", 1), ("sft", 2)):
        other.set_phase(phase)
        assert other.state[q]["step"].item() == steps


def test_batch_tensors_mask_the_positions_that_predict_the_response():
    t = to_tensors([Sample((5, 6), (7, 8, 1), 0.5), Sample((5,), (9,), -1.0)], pad_id=0,
                   device="cpu")
    assert t["ids"].tolist() == [[5, 6, 7, 8, 1], [5, 9, 0, 0, 0]]
    assert t["attn"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # logits at position i predict ids[i+1]: the response starts after the prompt's last token
    assert t["mask"].tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert t["adv"].tolist() == [0.5, -1.0]


# ------------------------------------------------------------ the DeepSpeed learner, in-process

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                                 bos_token_id=2)).save_pretrained(path)
    return str(path)


def _learner(path, **over):
    from relift_ray.config import load_config
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    single_process_group()
    o = {"algo.minibatches": 1, "algo.entropy_coef": 0, "algo.sft_entropy_coef": 0,
         "algo.weight_decay": 0, "algo.lr": 0.01, "algo.max_new_tokens": 4,
         "cluster.num_learners": 1, **over}
    return Learner(load_config(overrides=[f"{k}={v}" for k, v in o.items()]), path, world=1)


RL = (Sample((3, 4), (5, 6, 1), 0.0, "a"), Sample((3, 4), (7, 1), 0.0, "a"))
DEMO = (Sample((3, 4), (8, 9, 1), 0.0, "a"),)


def test_mixed_step_adds_the_sft_term_to_the_rl_loss(tiny_model):
    from relift_ray.core.algo import sft_loss
    from relift_ray.learner.forward import forward_logprobs
    from relift_ray.records import TrainBatch

    # zero advantages and no entropy bonus: the RL term alone has no gradient
    rl_only = _learner(tiny_model)
    before = {k: v.clone() for k, v in rl_only.full_state_dict().items()}
    m = rl_only.train_step(TrainBatch(step=1, rl=RL))
    assert m["learner_updates"] == 1
    assert all(torch.equal(before[k], v) for k, v in rl_only.full_state_dict().items())

    # mixed: the same RL batch plus coef * SFT loss. Adam's first step moves every weight by
    # lr * sign(gradient), so the change is fixed by the SFT gradient computed here by hand.
    mixed = _learner(tiny_model, **{"algo.mixed_sft_coef": 0.5})
    ref = {k: v.clone() for k, v in mixed.full_state_dict().items()}
    from transformers import AutoModelForCausalLM
    copy = AutoModelForCausalLM.from_pretrained(tiny_model)  # the same weights, outside DeepSpeed
    t = to_tensors(list(DEMO), 0, "cpu")
    logp, ent = forward_logprobs(copy, t)
    loss, _ = sft_loss(logp, t["mask"], ent, alpha=0.0)
    (0.5 * loss).backward()
    grads = {n: p.grad.clone() for n, p in copy.named_parameters()}
    m = mixed.train_step(TrainBatch(step=1, rl=RL, sft=DEMO, sft_mixed=True))
    assert m["learner_updates"] == 1 and m["rl/mixed_sft_nll"] == pytest.approx(loss.item())
    after = mixed.full_state_dict()
    checked = 0
    for n, g in grads.items():
        big = g.abs() > 1e-5
        delta = after[n] - ref[n]
        assert torch.allclose(delta[big], -0.01 * torch.sign(g[big]), atol=1e-4), n
        checked += int(big.sum())
    assert checked > 100


def test_separate_sft_step_uses_the_sft_learning_rate(tiny_model):
    from relift_ray.records import TrainBatch
    learner = _learner(tiny_model, **{"algo.sft_lr": 0.003})
    ref = {k: v.clone() for k, v in learner.full_state_dict().items()}
    m = learner.train_step(TrainBatch(step=1, sft=DEMO))
    assert m["learner_updates"] == 1 and "sft/sft_nll" in m
    moved = [((learner.full_state_dict()[k] - v).abs().max().item()) for k, v in ref.items()]
    assert max(moved) == pytest.approx(0.003, rel=1e-3)  # Adam's first step: lr * sign


def test_tis_correction_weights_each_token_by_the_learner_sampler_ratio(tiny_model):
    from transformers import AutoModelForCausalLM

    from relift_ray.learner.forward import forward_logprobs
    from relift_ray.records import TrainBatch

    copy = AutoModelForCausalLM.from_pretrained(tiny_model)
    adv = (1.0, -0.5)
    plain = [Sample(s.prompt_ids, s.response_ids, a, "a") for s, a in zip(RL, adv)]
    t = to_tensors(plain, 0, "cpu")
    with torch.no_grad():
        logp, _ = forward_logprobs(copy, t)
    # a sampler that gave every sampled token twice the learner's probability: weight 1/2
    sampled = []
    for i, s in enumerate(plain):
        start = len(s.prompt_ids) - 1
        own = logp[i, start:start + len(s.response_ids)]
        sampled.append(Sample(s.prompt_ids, s.response_ids, s.advantage, "a",
                              behavior_logprobs=tuple((own + math.log(2)).tolist())))
    learner = _learner(tiny_model)
    learner.a.is_correction = "tis"
    m = learner.train_step(TrainBatch(step=1, rl=tuple(sampled)))
    tokens = [len(s.response_ids) for s in plain]
    # first minibatch: ratio 1, so pg = -sum_i A_i * sum_t w / L_max with w = 0.5, L_max = 4
    expected = -sum(a * 0.5 * n for a, n in zip(adv, tokens)) / 4
    assert m["rl/pg_loss"] == pytest.approx(expected, rel=1e-5)
    assert m["rl/is_weight_mean"] == pytest.approx(0.5, rel=1e-5)
    # the mismatch figures logged each step: every token off by log 2
    assert m["mismatch/logprob_abs_diff_mean"] == pytest.approx(math.log(2), rel=1e-5)
    assert m["mismatch/tokens"] == sum(tokens)
    # the samples of the transformers backend carry no sampler log-probs: a clear error
    with pytest.raises(RuntimeError, match="algo.is_correction=tis: the RL samples carry no"):
        learner.train_step(TrainBatch(step=2, rl=tuple(plain)))


def test_gradient_checkpointing_gives_the_same_update(tiny_model):
    from relift_ray.records import TrainBatch
    batch = TrainBatch(step=1, rl=tuple(Sample(s.prompt_ids, s.response_ids, a, "a")
                                        for s, a in zip(RL, (1.0, -1.0))))
    a = _learner(tiny_model)
    b = _learner(tiny_model, **{"train.gradient_checkpointing": "true"})
    assert b.engine.module.is_gradient_checkpointing
    assert not a.engine.module.is_gradient_checkpointing
    assert b.engine.module.training  # HF checkpoints activations only in training mode
    ma, mb = a.train_step(batch), b.train_step(batch)
    assert ma["rl/loss"] == pytest.approx(mb["rl/loss"], rel=1e-5)
    sa, sb = a.full_state_dict(), b.full_state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_first_minibatch_needs_no_extra_old_logprob_pass(tiny_model):
    """With 2 minibatches the learner takes the first minibatch's old log-probs from its own
    forward pass (detached) and runs the extra no-grad pass over the second minibatch only,
    also when the samples carry the sampler's log-probs (the sampler comparison takes the
    first minibatch's from its training pass). Both updates are the same."""
    from relift_ray.learner.forward import forward_logprobs
    from relift_ray.records import TrainBatch

    adv = (1.0, -0.5, 0.75, -1.25)
    rows = [Sample((3, 4), (5, 6, 1), adv[0], "a"), Sample((3, 4), (7, 1), adv[1], "a"),
            Sample((3, 4, 5), (9, 1), adv[2], "b"), Sample((3,), (6, 7, 8, 1), adv[3], "b")]
    a = _learner(tiny_model, **{"algo.minibatches": 2})
    calls = []
    real = forward_logprobs

    def counting(model, t, chunk_tokens=0, packed=False):
        calls.append((torch.is_grad_enabled(), t["ids"].shape[0]))
        return real(model, t, chunk_tokens, packed)

    import relift_ray.learner.learner as learner_mod
    learner_mod.forward_logprobs = counting
    try:
        ma = a.train_step(TrainBatch(step=1, rl=tuple(rows)))
    finally:
        learner_mod.forward_logprobs = real
    # one no-grad pass over the second minibatch's 2 rows, then one pass per minibatch
    assert calls == [(False, 2), (True, 2), (True, 2)]

    # the same rows with sampler log-probs: old log-probs of all 4 rows in one no-grad pass
    from transformers import AutoModelForCausalLM
    copy = AutoModelForCausalLM.from_pretrained(tiny_model)
    t = to_tensors(rows, 0, "cpu")
    with torch.no_grad():
        logp, _ = forward_logprobs(copy, t)
    sampled = [Sample(s.prompt_ids, s.response_ids, s.advantage, s.question_id,
                      behavior_logprobs=tuple(logp[i, len(s.prompt_ids) - 1:
                                                   len(s.prompt_ids) - 1 + len(s.response_ids)]
                                              .tolist()))
               for i, s in enumerate(rows)]
    b = _learner(tiny_model, **{"algo.minibatches": 2})
    calls.clear()
    learner_mod.forward_logprobs = counting
    try:
        mb = b.train_step(TrainBatch(step=1, rl=tuple(sampled)))
    finally:
        learner_mod.forward_logprobs = real
    assert calls == [(False, 2), (True, 2), (True, 2)]  # no pass over all rows first
    # the sampler comparison still covers every sampled token, and they agree
    assert mb["mismatch/tokens"] == sum(len(s.response_ids) for s in rows)
    assert mb["mismatch/logprob_abs_diff_max"] < 1e-5
    assert ma["rl/loss"] == pytest.approx(mb["rl/loss"], rel=1e-5)
    wa, wb = a.full_state_dict(), b.full_state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ref = _learner(tiny_model)
    assert any(not torch.equal(wa[k], v) for k, v in ref.full_state_dict().items())


def test_transformers_generator_returns_the_learners_log_probs(relift_cache):
    """The transformers backend's sampler log-probs (asynchronous rollouts' behaviour policy)
    are the model's own: the learner computes the same for the same tokens."""
    from transformers import AutoModelForCausalLM

    from relift_ray.learner.forward import forward_logprobs
    from relift_ray.records import Question, SamplingParams
    from relift_ray.rollout.hf import HFGenerator

    gen = HFGenerator(relift_cache, threads=1)
    qs = [Question("a", "Q: 2+3=", "5"), Question("b", "Q: 12+30=", "42")]
    out = gen.generate(qs, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=4,
                                          logprobs=True))
    samples = [Sample(c.prompt_ids, c.response_ids, 0.0, c.question_id, c.logprobs)
               for group in out for c in group]
    assert all(len(s.behavior_logprobs) == len(s.response_ids) > 0 for s in samples)
    t = to_tensors(samples, gen.tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        logp, _ = forward_logprobs(AutoModelForCausalLM.from_pretrained(relift_cache), t)
    m = t["mask"].bool()
    assert torch.allclose(logp[m], t["blp"][m], atol=2e-4)
    plain = gen.generate(qs, SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=4))
    assert [c.response_ids for g in plain for c in g] == [s.response_ids for s in samples]
    assert all(c.logprobs == () for g in plain for c in g)  # only when asked for


# ------------------------------------------------------------ micro-batches and chunked logits

def test_microbatches_pack_by_padded_tokens():
    from relift_ray.learner.forward import microbatches
    lengths = [5, 9, 3, 9, 4, 20]
    out = microbatches(range(6), lengths, budget=18)
    assert sorted(i for m in out for i in m) == list(range(6))
    assert all(len(m) * max(lengths[i] for i in m) <= 18 or len(m) == 1 for m in out)
    assert out[0] == [5]  # longer than the budget: alone
    assert microbatches(range(6), lengths, budget=0) == [list(range(6))]


@pytest.mark.parametrize("loss", ["relift", "grpo"])
def test_micro_batched_chunked_update_equals_the_one_pass_update(tiny_model, loss):
    """Micro-batches of at most 12 padded tokens and logits 5 positions x rows at a time give
    the losses, metrics and weights of one pass over each minibatch (mode=mixed's SFT rows
    and an SFT step included)."""
    from relift_ray.records import TrainBatch
    rows = [Sample((3, 4), (5, 6, 1), 1.0, "a"), Sample((3, 4), (7, 1), -0.5, "a"),
            Sample((3, 4, 5), (9, 8, 7, 6, 1), 0.75, "b"), Sample((3,), (6, 7, 8, 1), -1.25, "b"),
            Sample((3, 4), (9, 1), 0.5, "c"), Sample((3, 5), (6, 6, 6, 1), -0.5, "c")]
    over = {"algo.minibatches": 2, "algo.rl_loss": loss, "algo.entropy_coef": 0.01,
            "algo.sft_entropy_coef": 0.01, "algo.mixed_sft_coef": 0.5,
            "algo.sft_lr": 0.003}
    demos = (Sample((3, 4), (8, 9, 1), 0.0, "a"), Sample((3,), (8, 8, 9, 9, 1), 0.0, "b"))
    a = _learner(tiny_model, **over)
    b = _learner(tiny_model, **over, **{"train.max_tokens_per_microbatch": 12,
                                        "train.logits_chunk_tokens": 5})
    for batch in (TrainBatch(step=1, rl=tuple(rows)),
                  TrainBatch(step=2, rl=tuple(rows), sft=demos, sft_mixed=True),
                  TrainBatch(step=3, sft=demos)):
        ma, mb = a.train_step(batch), b.train_step(batch)
        assert ma.keys() == mb.keys()
        for key in ma:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), key
    wa, wb = a.full_state_dict(), b.full_state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    ref = _learner(tiny_model)
    assert any(not torch.equal(wa[k], v) for k, v in ref.full_state_dict().items())


def test_chunked_log_probs_equal_the_whole_logits(tiny_model):
    from transformers import AutoModelForCausalLM

    from relift_ray.learner.forward import forward_logprobs
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    t = to_tensors([Sample((3, 4), (5, 6, 7, 8, 1), 1.0, "a"), Sample((3,), (7, 1), 1.0, "a")],
                   0, "cpu")
    whole = forward_logprobs(model, t)
    (whole[0].sum() + whole[1].sum()).backward()
    g_whole = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    chunked = forward_logprobs(model, t, chunk_tokens=3)  # 1 position x 2 rows per chunk
    (chunked[0].sum() + chunked[1].sum()).backward()
    assert torch.allclose(whole[0], chunked[0], atol=1e-6)
    assert torch.allclose(whole[1], chunked[1], atol=1e-6)
    assert all(torch.allclose(g_whole[n], p.grad, atol=1e-6) for n, p in model.named_parameters())


def test_released_aggregation_in_the_learner_matches_the_hand_computed_loss(tiny_model):
    """algo.entropy_agg=released: the RL loss is the sum over the released micro-batches
    (ceil(30 / 8) = 4 of them here) of their pg share minus c * their own entropy token
    mean, whatever memory micro-batching the learner uses; sft_agg=released likewise."""
    from transformers import AutoModelForCausalLM

    from relift_ray.core.algo import released_groups
    from relift_ray.learner.forward import forward_logprobs
    from relift_ray.records import TrainBatch
    rows = [Sample((3, 4), (5, 6, 1), 1.0, "a"), Sample((3, 4), (7, 1), -0.5, "a"),
            Sample((3, 4, 5), (9, 8, 7, 6, 1), 0.75, "b"), Sample((3,), (6, 7, 8, 1), -1.25, "b"),
            Sample((3, 4), (9, 1), 0.5, "c"), Sample((3, 5), (6, 6, 6, 1), -0.5, "c")]
    over = {"algo.entropy_coef": 0.1, "algo.entropy_agg": "released",
            "algo.entropy_token_budget": 8, "algo.sft_agg": "released",
            "algo.sft_micro_batch_size": 1, "algo.sft_entropy_coef": 0.1}
    a = _learner(tiny_model, **over)
    b = _learner(tiny_model, **over, **{"train.max_tokens_per_microbatch": 12,
                                        "train.logits_chunk_tokens": 5})
    copy = AutoModelForCausalLM.from_pretrained(tiny_model)
    lengths = [len(x.prompt_ids) + len(x.response_ids) for x in rows]
    groups = released_groups(lengths, 8)
    assert len(groups) == 4
    by_hand = 0.0
    with torch.no_grad():
        for g in groups:
            t = to_tensors([rows[i] for i in g], 0, "cpu")
            logp, ent = forward_logprobs(copy, t)
            pg = -(t["adv"][:, None] * t["mask"]).sum() / 4  # ratio 1 on the first minibatch
            by_hand += float(pg - 0.1 * (ent * t["mask"]).sum() / t["mask"].sum())
        demos = (Sample((3, 4), (8, 9, 1), 0.0, "a"), Sample((3,), (8, 8, 9, 9, 1), 0.0, "b"))
        sft_by_hand = 0.0
        for d in demos:  # micro-batches of one row, each its token mean / 2 micro-batches
            t = to_tensors([d], 0, "cpu")
            logp, ent = forward_logprobs(copy, t)
            sft_by_hand += float(((-logp - 0.1 * ent) * t["mask"]).sum() / t["mask"].sum()) / 2
    ma = a.train_step(TrainBatch(step=1, rl=tuple(rows)))
    mb = b.train_step(TrainBatch(step=1, rl=tuple(rows)))
    assert ma["rl/loss"] == pytest.approx(by_hand, rel=1e-5)
    sft = _learner(tiny_model, **over).train_step(TrainBatch(step=1, sft=demos))
    assert sft["sft/sft_loss"] == pytest.approx(sft_by_hand, rel=1e-5)
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), key
    wa, wb = a.full_state_dict(), b.full_state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    # the paper's aggregation gives another loss on the same batch
    plain = _learner(tiny_model, **{"algo.entropy_coef": 0.1})
    assert plain.train_step(TrainBatch(step=1, rl=tuple(rows)))["rl/loss"] != \
        pytest.approx(by_hand, rel=1e-3)


def test_padding_free_forward_equals_the_padded_one(tiny_model):
    from transformers import AutoModelForCausalLM

    from relift_ray.learner.forward import check_packing, forward_logprobs, microbatches
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = [Sample((3, 4), (5, 6, 7, 8, 1), 1.0, "a"), Sample((3,), (7, 1), 1.0, "a"),
            Sample((3, 4, 9), (6, 1), 1.0, "a")]
    t = to_tensors(rows, 0, "cpu")
    for chunk in (0, 4):
        a = forward_logprobs(model, t, chunk)
        b = forward_logprobs(model, t, chunk, packed=True)
        m = t["mask"].bool()
        assert torch.allclose(a[0][m], b[0][m], atol=1e-5)
        assert torch.allclose(a[1][m], b[1][m], atol=1e-5)
    check_packing(model)  # the toy Llama keeps packed rows apart
    # the token budget counts the rows' own tokens: 7 + 3 + 5 = 15 fits 16 unpadded
    lengths = [7, 3, 5]
    assert microbatches(range(3), lengths, 16, padded=False) == [[0, 2, 1]]
    assert len(microbatches(range(3), lengths, 16)) == 2  # padded: 3 x 7 = 21 > 16


def test_padding_free_update_equals_the_padded_update(tiny_model):
    from relift_ray.records import TrainBatch
    rows = [Sample((3, 4), (5, 6, 1), 1.0, "a"), Sample((3, 4), (7, 1), -0.5, "a"),
            Sample((3, 4, 5), (9, 8, 7, 6, 1), 0.75, "b"), Sample((3,), (6, 7, 8, 1), -1.25, "b")]
    over = {"algo.minibatches": 2, "algo.entropy_coef": 0.01, "algo.sft_entropy_coef": 0.01}
    demos = (Sample((3, 4), (8, 9, 1), 0.0, "a"), Sample((3,), (8, 8, 9, 9, 1), 0.0, "b"))
    a = _learner(tiny_model, **over)
    b = _learner(tiny_model, **over, **{"train.padding_free": True,
                                        "train.max_tokens_per_microbatch": 12})
    for batch in (TrainBatch(step=1, rl=tuple(rows)), TrainBatch(step=2, sft=demos)):
        ma, mb = a.train_step(batch), b.train_step(batch)
        for key in ma:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-6), key
    wa, wb = a.full_state_dict(), b.full_state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def _fresh_python(code: str, timeout: int = 120):
    """``code`` run by a new Python process in the repository root (what it imports is then
    only what the code under test imports)."""
    import subprocess
    import sys
    from pathlib import Path
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).parent.parent)


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_deepspeed_is_imported_without_mlflow_which_stays_importable():
    """A learner worker imports DeepSpeed without the MLflow import DeepSpeed's autotuner does
    (about 1 s of CPU per worker on the way to step 1); MLflow still imports afterwards."""
    code = ("import sys\n"
            "from relift_ray.imports import import_deepspeed\n"
            "import_deepspeed()\n"
            "assert 'deepspeed' in sys.modules and 'mlflow' not in sys.modules\n"
            "import mlflow, mlflow.tracking\n"
            "print('ok', mlflow.__version__)\n")
    out = _fresh_python(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_a_learner_step_never_loads_torchinductor(tiny_model):
    """DeepSpeed imports its Muon optimizer in its optimizer check and in every gradient
    reduction; that module's torch.compile decorations load TorchInductor (about 1 s of CPU
    per learner before step 1, and again in the first backward pass). relift_ray imports it
    with the compilation deferred to a first call, so a ZeRO-2 step never loads Inductor."""
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_learner import _learner, RL\n"
        "from relift_ray.records import TrainBatch\n"
        f"learner = _learner({str(tiny_model)!r}, **{{'train.zero_stage': 2}})\n"
        "m = learner.train_step(TrainBatch(step=1, rl=RL))\n"
        "from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam\n"
        "assert 'torch._inductor.compile_fx' not in sys.modules\n"
        "print('ok', m['learner_updates'])\n")
    out = _fresh_python(code, timeout=300)
    assert out.returncode == 0 and "ok 1" in out.stdout, out.stderr[-3000:]


def test_deferred_compile_compiles_once_on_the_first_call(monkeypatch):
    from relift_ray import imports
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return lambda *a, **k: ("compiled", fn(*a, **k))
    monkeypatch.setattr(torch, "compile", fake_compile)

    @imports._compile_on_first_call()
    def double(x):
        return 2 * x
    assert compiled == [] and double.__name__ == "double"
    assert double(3) == ("compiled", 6) and double(4) == ("compiled", 8)
    assert len(compiled) == 1


def test_the_learner_process_group_config_loads_without_torch():
    """Ray Train's controller unpickles the learner group's backend config and builds its
    backend; from relift_ray.learner.process_group neither imports torch (Ray Train's TorchConfig
    would: about 1 s of CPU in the controller on the way to step 1)."""
    code = ("import pickle, sys\n"
            "from relift_ray.learner.process_group import LearnerTorchConfig\n"
            "blob = pickle.dumps(LearnerTorchConfig(backend='gloo'))\n"
            "cfg = pickle.loads(blob)\n"
            "backend = cfg.backend_cls()\n"
            "assert cfg.to_dict()['backend'] == 'gloo' and cfg.framework.name == 'TORCH'\n"
            "assert backend.share_cuda_visible_devices\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "print('ok')\n")
    out = _fresh_python(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_bf16_autocast_update_stays_close_to_fp32_and_keeps_fp32_weights(tiny_model):
    """train.autocast=bfloat16: the same step with bf16 matrix products; the weights and the
    optimizer state stay fp32 and the loss is within bf16 rounding of the fp32 one."""
    from relift_ray.records import TrainBatch
    rows = tuple(Sample((3, 4), (5, 6, 1), a, "a") for a in (1.0, -1.0))
    fp32 = _learner(tiny_model).train_step(TrainBatch(step=1, rl=rows, sft=DEMO))
    mixed = _learner(tiny_model, **{"train.autocast": "bfloat16"})
    m = mixed.train_step(TrainBatch(step=1, rl=rows, sft=DEMO))
    assert m["sft/sft_loss"] == pytest.approx(fp32["sft/sft_loss"], rel=2e-2)
    assert m["sft/sft_loss"] != fp32["sft/sft_loss"]  # the bf16 products really ran
    assert m["rl/pg_loss"] == pytest.approx(fp32["rl/pg_loss"], abs=2e-2)
    assert all(p.dtype == torch.float32 for p in mixed.engine.module.parameters())
    state = next(iter(mixed.opt.state.values()))
    assert state["exp_avg"].dtype == torch.float32

