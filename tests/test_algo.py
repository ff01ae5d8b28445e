"""Advantages and both loss forms against hand-computed values."""
import math

import pytest
import torch

from relift_ray.algo import group_advantages, policy_loss, sft_loss, token_logprobs


def test_advantages_subtract_group_mean_without_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    a = group_advantages(r)
    assert a.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [0.25, 0.25, 0.25, -0.75]]


def test_advantages_std_normalised_for_grpo():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    a = group_advantages(r, normalize_std=True)
    expected = 0.5 / math.sqrt(1 / 3)  # unbiased std of [1,0,0,1] is sqrt(1/3)
    assert a[0].tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-5)
    assert a[1].tolist() == [0.0] * 4  # all-equal group: no signal, no NaN


def _batch():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -0.5])
    ent = torch.full((2, 3), 2.0)
    old = torch.zeros(2, 3)
    return mask, adv, ent, old


def test_relift_loss_sum_over_tokens_divided_by_lmax_with_entropy_bonus():
    mask, adv, ent, old = _batch()
    loss, m = policy_loss(old.clone(), old, adv, mask, ent, kind="relift", l_max=4,
                          entropy_coef=0.1)
    # -(1*1 + 1*1 + (-0.5)*1) / 4 = -0.375 ; entropy mean 2 -> -0.1*2
    assert loss.item() == pytest.approx(-0.375 - 0.2)
    assert m["pg_loss"] == pytest.approx(-0.375)


def test_relift_loss_is_not_clipped():
    mask, adv, ent, old = _batch()
    logp = old.clone()
    logp[0, 0] = math.log(2.0)  # ratio 2 on the first token of sequence 0
    loss, _ = policy_loss(logp, old, adv, mask, ent, kind="relift", l_max=4, entropy_coef=0.0)
    assert loss.item() == pytest.approx(-(2 + 1 - 0.5) / 4)


def test_grpo_loss_clips_and_takes_per_sequence_token_mean():
    mask, adv, ent, old = _batch()
    logp = old.clone()
    logp[0, 0] = math.log(2.0)
    loss, m = policy_loss(logp, old, adv, mask, ent, kind="grpo", clip_eps=0.2, entropy_coef=0.0)
    # seq0: max(-2, -1.2) = -1.2 and -1 -> mean -1.1 ; seq1: +0.5 ; mean over sequences -0.3
    assert loss.item() == pytest.approx(-0.3)
    assert m["clip_frac"] == pytest.approx(1 / 3)


def test_relift_gradient_is_minus_advantage_over_lmax():
    mask, adv, ent, old = _batch()
    logp = old.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, ent, kind="relift", l_max=4, entropy_coef=0.0)
    loss.backward()
    assert logp.grad.tolist() == [[-0.25, -0.25, 0.0], [0.125, 0.0, 0.0]]


def test_sft_loss_token_mean_nll_minus_alpha_entropy():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, m = sft_loss(logp, mask, torch.ones(2, 3), alpha=0.5)
    assert m["sft_nll"] == pytest.approx(2.0)  # (1+2+3)/3 tokens, padding ignored
    assert loss.item() == pytest.approx(1.5)


def test_token_logprobs_and_entropy_of_uniform_logits():
    logits = torch.zeros(1, 2, 4)
    logp, ent = token_logprobs(logits, torch.tensor([[0, 3]]))
    assert logp[0].tolist() == pytest.approx([-math.log(4)] * 2)
    assert ent[0].tolist() == pytest.approx([math.log(4)] * 2)


def test_unknown_loss_kind_is_an_error():
    mask, adv, ent, old = _batch()
    with pytest.raises(ValueError, match="unknown RL loss kind"):
        policy_loss(old, old, adv, mask, ent, kind="ppo")
