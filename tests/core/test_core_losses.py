import pytest
import torch

from danceopd.core import (
    binned_loss,
    dense_ode_kl,
    group_advantages,
    kl_reward,
    ppo_clip_loss,
    transition_kl,
    velocity_mse,
)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    v_s = torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
    v_t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return v_s, v_t


def test_velocity_mse_value_and_grad():
    v_s, v_t = _pair((2, 3, 4))
    loss = velocity_mse(v_s, v_t)
    diff = v_s.detach() - v_t
    assert loss.dim() == 0
    torch.testing.assert_close(loss, (diff**2).sum() / 24)
    loss.backward()
    torch.testing.assert_close(v_s.grad, 2 * diff / 24)


def test_velocity_mse_weighted():
    v_s, v_t = _pair((3, 4), seed=1)
    w = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    loss = velocity_mse(v_s, v_t, weight=w)
    diff = v_s.detach() - v_t
    per_sample = (diff**2).mean(dim=1)
    torch.testing.assert_close(loss, (w * per_sample).mean())
    loss.backward()
    torch.testing.assert_close(v_s.grad, w.reshape(3, 1) * 2 * diff / (4 * 3))
    assert torch.all(v_s.grad[1] == 0)
    torch.testing.assert_close(
        velocity_mse(v_s, v_t, torch.ones(3, dtype=torch.float64)), velocity_mse(v_s, v_t)
    )
    with pytest.raises(ValueError):
        velocity_mse(v_s, v_t[:2])


def test_dense_ode_kl_hand_computation():
    # T = 2 steps, B = 2, D = 2
    v_s = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    v_s.requires_grad_(True)
    v_t = torch.zeros(2, 2, 2, dtype=torch.float64)
    dt = torch.tensor([-0.5, -0.25], dtype=torch.float64)
    loss = dense_ode_kl(v_s, v_t, dt)
    # sample 0: 0.25/2 * 5 + 0.0625/2 * 9 = 0.625 + 0.28125; sample 1: 0 + 0.0625/2 * 2 = 0.0625
    expected = (0.625 + 0.28125 + 0.0625) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    expected_grad = (dt**2).reshape(2, 1, 1) * v_s.detach() / 2  # d/dv (dt^2/2 ||v||^2) / B
    torch.testing.assert_close(v_s.grad, expected_grad)


def test_dense_ode_kl_equals_sum_of_gaussian_kls():
    v_s, v_t = _pair((3, 2, 4), seed=2)
    dt = torch.tensor([-0.3, -0.2, -0.5], dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(3):
        p = torch.distributions.Normal(x + dt[i] * v_s[i].detach(), 1.0)
        q = torch.distributions.Normal(x + dt[i] * v_t[i], 1.0)
        total += torch.distributions.kl_divergence(p, q).sum(dim=1)
    torch.testing.assert_close(dense_ode_kl(v_s.detach(), v_t, dt), total.mean())


def test_transition_kl_matches_torch_kl_and_grad():
    m_s, m_t = _pair((2, 3), seed=3)
    std = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    kl = transition_kl(m_s, m_t, std)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m_s.detach(), std.expand(2, 3)),
        torch.distributions.Normal(m_t, std.expand(2, 3)),
    ).sum(dim=1)
    assert kl.shape == (2,)
    torch.testing.assert_close(kl, ref)
    torch.testing.assert_close(kl_reward(m_s, m_t, std), -kl)
    kl.sum().backward()
    torch.testing.assert_close(m_s.grad, (m_s.detach() - m_t) / std**2)


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0, -4.0, 0.0, 4.0])
    adv = group_advantages(rewards, group_size=3)
    grouped = adv.reshape(3, 3)
    torch.testing.assert_close(grouped.mean(dim=1), torch.zeros(3), rtol=0, atol=1e-6)
    std0 = torch.tensor([1.0, 2.0, 3.0]).std(unbiased=False)
    torch.testing.assert_close(grouped[0], torch.tensor([-1.0, 0.0, 1.0]) / (std0 + 1e-4))
    assert torch.all(grouped[1] == 0)  # constant group -> zero advantage
    torch.testing.assert_close(grouped[2], grouped[0] * (std0 + 1e-4) * 4 / (4 * std0 + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(rewards, 4)


def test_ppo_clip_inactive_equals_policy_gradient():
    lp_old = torch.tensor([0.0, 0.0])
    lp_new = torch.tensor([0.05, -0.1], requires_grad=True)  # ratios inside [0.8, 1.2]
    adv = torch.tensor([1.0, -2.0])
    loss = ppo_clip_loss(lp_new, lp_old, adv, clip=0.2)
    ratio = torch.exp(lp_new.detach())
    torch.testing.assert_close(loss, (-adv * ratio).mean())
    loss.backward()
    torch.testing.assert_close(lp_new.grad, -adv * ratio / 2)


def test_ppo_clip_active_cuts_gradient():
    lp_old = torch.zeros(4)
    # A > 0 with ratio > 1 + c: clipped (no grad); A < 0 with ratio < 1 - c: clipped (no grad);
    # A > 0 with ratio < 1 - c and A < 0 with ratio > 1 + c: pessimistic unclipped term, grad flows
    lp_new = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = ppo_clip_loss(lp_new, lp_old, adv, clip=0.2)
    expected = torch.tensor([-1.0 * 1.2, 1.0 * 0.8, -1.0 * 0.5, 1.0 * 1.5]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(lp_new.grad, torch.tensor([0.0, 0.0, -0.5, 1.5]) / 4)


def test_binned_loss():
    loss = torch.tensor([1.0, 3.0, 5.0, 7.0, 100.0])
    t = torch.tensor([0.05, 0.09, 0.55, 1.0, 0.95])
    out = binned_loss(loss, t, n_bins=10)
    assert out == {0: 2.0, 5: 5.0, 9: pytest.approx(53.5)}
    assert binned_loss(loss, t, n_bins=2) == {0: 2.0, 1: pytest.approx(112.0 / 3)}
