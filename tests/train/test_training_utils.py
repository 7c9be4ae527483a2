"""The training maths the trainer and the learn-check share (polyvivid/train/training_utils.py)."""

import math
from types import SimpleNamespace

import pytest
import torch

from polyvivid.train.training_utils import sample_sigmas, scheduled_lr, shift_sigmas, velocity_loss


def test_the_schedule_warms_up_then_holds_or_decays():
    lrs = [scheduled_lr(step, 1.0, 10, warmup_steps=4) for step in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4:] == [1.0] * 6
    cosine = [scheduled_lr(step, 2.0, 10, warmup_steps=2, schedule="cosine") for step in range(10)]
    assert cosine[:3] == [1.0, 2.0, 2.0]  # the cosine starts where the warm-up ends
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:])) and cosine[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    # the learn-check's recipe: the cosine spans every step, the warm-up scales its start
    from_start = [scheduled_lr(step, 1.0, 10, warmup_steps=2, schedule="cosine", cosine_from_start=True)
                  for step in range(10)]
    assert from_start[0] == pytest.approx(0.5) and from_start[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_the_shift_moves_noise_levels_towards_noise():
    u = torch.linspace(0, 0.99, 50)
    assert torch.equal(shift_sigmas(u, 1.0), u)
    shifted = shift_sigmas(u, 7.0)
    assert (shifted >= u).all() and (shifted[1:] > shifted[:-1]).all() and shifted[-1] < 1
    assert torch.equal(sample_sigmas(4, torch.Generator().manual_seed(0), 7.0),
                       shift_sigmas(torch.rand(4, generator=torch.Generator().manual_seed(0)), 7.0))


def test_the_velocity_loss_is_rectified_flow_and_a_function_of_its_generator():
    class ZeroVelocity(torch.nn.Module):  # predicts 0: the loss is then mean((noise - x0)^2)
        def forward(self, hidden_states, timestep, guidance=None):
            self.seen = (hidden_states, timestep, guidance)
            return SimpleNamespace(sample=torch.zeros_like(hidden_states))

    model, x0 = ZeroVelocity(), torch.randn(2, 4, 3, 8, 8)
    loss = velocity_loss(model, x0, {}, torch.Generator().manual_seed(5), torch.device("cpu"), None, 7.0, True)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=gen)  # drawn first: noise, then the levels
    sigma = sample_sigmas(2, gen, 7.0)
    assert loss.item() == pytest.approx((noise - x0).square().mean().item())
    x_t, timestep, guidance = model.seen
    s = sigma.view(2, 1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - s) * x0 + s * noise) and torch.allclose(timestep, sigma * 1000)
    assert torch.equal(guidance, torch.full((2,), 1000.0))
    again = velocity_loss(model, x0, {}, torch.Generator().manual_seed(5), torch.device("cpu"), None, 7.0, True)
    assert again.item() == loss.item()
