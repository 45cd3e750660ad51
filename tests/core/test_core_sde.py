import math

import pytest
import torch

from danceopd.core import (
    euler_update,
    gaussian_log_prob,
    sde_rollout,
    sde_sigma,
    sde_step,
    sde_transition,
    timesteps,
)


def _xv(seed=0, shape=(3, 2, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(
        *shape, generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("t,t_next", [(1.0, 0.9), (0.6, 0.4), (0.2, 0.0)])
def test_eta_zero_is_euler(t, t_next):
    x, v = _xv()
    mean, std = sde_transition(x, v, t, t_next, eta=0.0)
    torch.testing.assert_close(mean, euler_update(x, v, t, t_next), rtol=0, atol=1e-15)
    assert torch.all(std == 0)


def test_transition_matches_hand_formula():
    x, v = _xv(1)
    t, t_next, eta = 0.6, 0.45, 0.7
    mean, std = sde_transition(x, v, t, t_next, eta)
    sigma = eta * math.sqrt(t / (1 - t))
    drift = v + sigma**2 / (2 * t) * (x + (1 - t) * v)
    torch.testing.assert_close(mean, x + drift * (t_next - t))
    assert std.shape == (3, 1, 1)
    torch.testing.assert_close(std, torch.full((3, 1, 1), sigma * math.sqrt(t - t_next), dtype=torch.float64))


def test_transition_per_sample_times():
    x, v = _xv(2)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    t_next = torch.tensor([0.8, 0.3, 0.1], dtype=torch.float64)
    mean, std = sde_transition(x, v, t, t_next, 0.5)
    for b in range(3):
        m_b, s_b = sde_transition(x[b : b + 1], v[b : b + 1], t[b].item(), t_next[b].item(), 0.5)
        torch.testing.assert_close(mean[b : b + 1], m_b)
        torch.testing.assert_close(std[b : b + 1], s_b)


def test_sigma_is_finite_at_t_one():
    t = torch.tensor(1.0, dtype=torch.float64)
    sigma = sde_sigma(t, torch.tensor(0.9, dtype=torch.float64), 0.5)
    # Flow-GRPO rule at t = 1: the denominator uses the step size (= 1 - t_next)
    assert sigma.item() == pytest.approx(0.5 * math.sqrt(1 / 0.1))
    x, v = _xv(3)
    mean, std = sde_transition(x, v, 1.0, 0.9, 0.5)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    # interior times on an ordinary grid are untouched by the floor
    assert sde_sigma(torch.tensor(0.5), torch.tensor(0.4), 1.0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        sde_transition(x, v, 0.5, 0.4, -0.1)


def test_gaussian_log_prob_matches_torch_normal():
    x, mean = _xv(4)
    std = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64).reshape(3, 1, 1)
    ours = gaussian_log_prob(x, mean, std)
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x).sum(dim=(1, 2))
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref)
    ref_scalar = torch.distributions.Normal(mean, 0.7).log_prob(x).sum(dim=(1, 2))
    torch.testing.assert_close(gaussian_log_prob(x, mean, 0.7), ref_scalar)


def test_sde_step_empirical_moments_and_determinism():
    n = 40000
    x = torch.tensor([[0.5], [-1.0]], dtype=torch.float64).expand(2, n).contiguous()
    v = torch.tensor([[1.5], [0.2]], dtype=torch.float64).expand(2, n).contiguous()
    g = torch.Generator().manual_seed(0)
    x_next, mean, std = sde_step(x, v, 0.7, 0.5, 0.8, generator=g)
    assert x_next.shape == x.shape
    for b in range(2):
        assert x_next[b].mean().item() == pytest.approx(
            mean[b, 0].item(), abs=4 * std[b, 0].item() / math.sqrt(n)
        )
        assert x_next[b].std().item() == pytest.approx(std[b, 0].item(), rel=0.02)
    again, _, _ = sde_step(x, v, 0.7, 0.5, 0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_next, again)


def test_sde_rollout_preserves_gaussian_marginal():
    # data x_0 ~ N(0, s0^2) in 1-D: exact velocity E[noise - x_0 | x_t] = x * (t - (1 - t) s0^2) / var_t,
    # var_t = (1 - t)^2 s0^2 + t^2. The marginal-preserving SDE must end near N(0, s0^2) (the ODE too).
    s0 = 0.5

    def field(x, t):
        t = t.to(x.dtype).reshape(-1, 1)
        var_t = (1 - t) ** 2 * s0**2 + t**2
        return x * (t - (1 - t) * s0**2) / var_t

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 20000, generator=g, dtype=torch.float64)
    states, log_probs, means, stds = sde_rollout(field, noise, timesteps(50), eta=0.7, generator=g)
    assert states.shape == (51, 1, 20000) and log_probs.shape == (50, 1)
    assert means.shape == (50, 1, 20000) and stds.shape == (50, 1, 1)
    assert stds[-1].item() > 0  # the rollout really is stochastic
    assert states[-1].std().item() == pytest.approx(s0, rel=0.05)
    assert abs(states[-1].mean().item()) < 0.02
    mid = states[25]  # t = 0.5
    assert mid.std().item() == pytest.approx(math.sqrt(0.25 * s0**2 + 0.25), rel=0.05)
