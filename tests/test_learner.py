"""Learner pieces that need no cluster: the two-phase optimizer and the batch tensors."""
import pytest
import torch

from relift_ray.learner import TwoPhaseAdamW, to_tensors
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
