"""Advantages and both loss forms against hand-computed values."""
import math

import pytest
import torch

from relift_ray.core.algo import group_advantages, policy_loss, sft_loss, token_logprobs


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


def test_the_released_rl_baseline_clips_and_sums_over_l_max():
    # train_rl.sh: the ratio clipped at 0.2, advantages r - mean (not divided by the std), the
    # clipped terms summed over the tokens and divided by L_max (8,192 there, 4 here)
    mask, adv, ent, old = _batch()
    logp = old.clone()
    logp[0, 0] = math.log(2.0)
    loss, m = policy_loss(logp, old, adv, mask, ent, kind="clipped", clip_eps=0.2, l_max=4,
                          entropy_coef=0.0)
    # seq0 (A=1): max(-2, -1.2) = -1.2 and -1; seq1 (A=-0.5): +0.5 -> (-1.2 - 1 + 0.5) / 4
    assert loss.item() == pytest.approx(-1.7 / 4)
    assert m["clip_frac"] == pytest.approx(1 / 3)
    logp = logp.requires_grad_(True)
    policy_loss(logp, old, adv, mask, ent, kind="clipped", clip_eps=0.2, l_max=4,
                entropy_coef=0.0)[0].backward()
    # the clipped token has no gradient; the others -A / L_max (times the ratio, here 1)
    assert logp.grad.tolist() == [[0.0, -0.25, 0.0], [0.125, 0.0, 0.0]]


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


# ------------------------------------------------------------ the released code's aggregation

def test_released_groups_count_and_balance_like_dynamic_micro_batches():
    from relift_ray.core.algo import released_groups
    # 65 tokens, at most 32 per micro-batch: ceil(65/32) = 3 groups, longest first into
    # the lightest
    assert released_groups([10, 30, 20, 5], 32) == [[1], [2], [0, 3]]
    assert released_groups([10, 20], 32768) == [[0, 1]]  # one micro-batch
    assert released_groups([40, 50], 32) == [[1], [0]]  # never more groups than rows
    assert released_groups([], 32) == []


def test_released_entropy_term_is_the_sum_of_micro_batch_token_means():
    from relift_ray.core.algo import released_entropy_weights
    torch.manual_seed(0)
    lengths, resp = [10, 30, 20, 5], [4, 10, 6, 2]
    w = released_entropy_weights(lengths, resp, 32)
    assert w.tolist() == pytest.approx([1 / 6, 1 / 10, 1 / 6, 1 / 6])  # groups {1} {2} {0,3}
    T = 10
    mask = torch.zeros(4, T)
    for i, r in enumerate(resp):
        mask[i, :r] = 1
    ent, logp = torch.rand(4, T), -torch.rand(4, T)
    adv = torch.tensor([0.5, -0.25, 1.0, -1.0])
    loss, m = policy_loss(logp, logp.detach(), adv, mask, ent, l_max=16, entropy_coef=0.1,
                          entropy_weight=w)
    groups = [[1], [2], [0, 3]]
    by_hand = sum(-(adv[g, None] * mask[g]).sum() / 16
                  - 0.1 * (ent[g] * mask[g]).sum() / mask[g].sum() for g in groups)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # the paper's formula counts the bonus once: 3 micro-batches here, so it differs
    once, m1 = policy_loss(logp, logp.detach(), adv, mask, ent, l_max=16, entropy_coef=0.1)
    assert once.item() != pytest.approx(loss.item(), rel=1e-3)
    assert m["entropy"] == m1["entropy"]  # the figure reported stays the token mean


def test_released_sft_loss_adds_micro_batch_means_over_their_count():
    from relift_ray.core.algo import released_sft_weights
    torch.manual_seed(1)
    resp = [3, 5, 2, 4, 6]
    w = released_sft_weights(resp, micro=2, batch_rows=10)  # 10 rows in all: 5 micro-batches
    assert w.tolist() == pytest.approx([1 / 40, 1 / 40, 1 / 30, 1 / 30, 1 / 30])
    mask = torch.zeros(5, 6)
    for i, r in enumerate(resp):
        mask[i, :r] = 1
    logp, ent = -torch.rand(5, 6), torch.rand(5, 6)
    loss, m = sft_loss(logp, mask, ent, alpha=0.01, token_weight=w)
    by_hand = sum(((-logp[a:a + 2] - 0.01 * ent[a:a + 2]) * mask[a:a + 2]).sum()
                  / mask[a:a + 2].sum() for a in (0, 2, 4)) / 5
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    plain, m0 = sft_loss(logp, mask, ent, alpha=0.01)
    assert m["sft_nll"] == m0["sft_nll"] and plain.item() != pytest.approx(loss.item(), rel=1e-3)
