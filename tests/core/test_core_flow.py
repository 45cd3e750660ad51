import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danceopd.core import (
    euler_step,
    euler_update,
    interpolate,
    ode_sample,
    sample_t,
    shift_time,
    timesteps,
    velocity_target,
    x0_from_velocity,
)


def _data(seed=0, shape=(3, 2, 4)):
    g = torch.Generator().manual_seed(seed)
    x_0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    noise = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x_0, noise


def test_interpolate_endpoints_and_formula():
    x_0, noise = _data()
    assert torch.equal(interpolate(x_0, noise, 0.0), x_0)
    assert torch.equal(interpolate(x_0, noise, 1.0), noise)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t = interpolate(x_0, noise, t)
    for b in range(3):
        torch.testing.assert_close(x_t[b], (1 - t[b]) * x_0[b] + t[b] * noise[b])


def test_velocity_and_x0_identities():
    x_0, noise = _data(1)
    v = velocity_target(x_0, noise)
    torch.testing.assert_close(v, noise - x_0)
    t = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)
    x_t = interpolate(x_0, noise, t)
    torch.testing.assert_close(x0_from_velocity(x_t, v, t), x_0, rtol=0, atol=1e-12)
    # dx_t/dt = v: finite difference along the path
    h = 1e-6
    fd = (interpolate(x_0, noise, t + h) - interpolate(x_0, noise, t - h)) / (2 * h)
    torch.testing.assert_close(fd, v, rtol=0, atol=1e-8)


def test_time_shape_validation():
    x_0, noise = _data()
    with pytest.raises(ValueError):
        interpolate(x_0, noise, torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.3])
@pytest.mark.parametrize("n", [1, 4, 9])
def test_timesteps_grid(n, shift):
    ts = timesteps(n, shift)
    assert ts.shape == (n + 1,)
    assert ts.dtype == torch.float32
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert torch.all(ts[1:] < ts[:-1])


@pytest.mark.parametrize("shift", [0.1, 0.3, 7.3])
def test_timesteps_endpoints_exact_in_float64(shift):
    ts = timesteps(5, shift, dtype=torch.float64)
    assert ts.dtype == torch.float64
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0


def test_timesteps_shift_values():
    uniform = timesteps(4)
    torch.testing.assert_close(uniform, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = timesteps(4, 3.0)
    # 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert shifted[2].item() == pytest.approx(0.75)
    assert torch.all(shifted >= uniform)
    assert torch.all(timesteps(4, 0.5) <= uniform)
    with pytest.raises(ValueError):
        timesteps(0)
    with pytest.raises(ValueError):
        timesteps(4, 0.0)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 20.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_shift_time_monotone_endpoints(shift, a, b):
    t = torch.tensor([0.0, a, b, 1.0], dtype=torch.float64)
    s = shift_time(t, shift)
    assert s[0].item() == 0.0
    assert s[3].item() == pytest.approx(1.0, abs=1e-12)
    if a < b:
        assert s[1] <= s[2]
    assert torch.all((s >= 0) & (s <= 1 + 1e-12))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 3, 10])
def test_euler_constant_field_lands_on_x0(n, shift):
    x_0, noise = _data(2)
    v_const = noise - x_0

    def field(x_t, t):
        assert t.shape == (x_t.shape[0],)
        return v_const

    out = ode_sample(field, noise, timesteps(n, shift))
    torch.testing.assert_close(out, x_0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shift", [1.0, 0.3, 3.0])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_euler_point_mass_field_lands_on_x0(n, shift):
    # data = point mass at x0 -> exact velocity (x - x0) / t; each Euler step scales x - x0 by t_next / t
    x_0, noise = _data(3)

    def field(x_t, t):
        return (x_t - x_0) / t.reshape(-1, 1, 1)

    out = ode_sample(field, noise, timesteps(n, shift))
    torch.testing.assert_close(out, x_0, rtol=0, atol=1e-12)
    # intermediate state follows the straight path
    grid = timesteps(n, shift)
    x = euler_step(field, noise, grid[0], grid[1])
    torch.testing.assert_close(x, interpolate(x_0, noise, grid[1].double()), rtol=0, atol=1e-7)


def test_euler_step_formula_and_per_sample_times():
    x, v = _data(4)
    t = torch.tensor([0.9, 0.5, 0.3])
    t_next = torch.tensor([0.8, 0.25, 0.0])
    out = euler_step(lambda x_t, tt: v, x, t, t_next)
    expected = x + (t_next - t).double().reshape(-1, 1, 1) * v
    torch.testing.assert_close(out, expected)


def test_euler_update_low_precision_state_uses_fp32_step():
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    v = torch.ones(2, 3, dtype=torch.bfloat16)
    t, t_next = torch.tensor(0.9990), torch.tensor(0.9985)
    out = euler_update(x, v, t, t_next)
    assert out.dtype == torch.bfloat16
    expected = (t_next - t).to(torch.bfloat16)  # dt computed in fp32, rounded once
    assert torch.all(out == expected)
    assert out[0, 0].item() != 0.0


def test_ode_sample_has_no_graph():
    w = torch.nn.Parameter(torch.tensor(0.5))
    noise = torch.randn(2, 3)
    out = ode_sample(lambda x, t: w * x, noise, timesteps(3))
    assert not out.requires_grad
    torch.testing.assert_close(out, noise * (1 - 0.5 / 3) ** 3)


def test_sample_t_distributions_and_determinism():
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    a = sample_t(4000, g1)
    b = sample_t(4000, g2)
    assert torch.equal(a, b) and a.shape == (4000,)
    assert torch.all((a > 0) & (a < 1))
    assert a.median().item() == pytest.approx(0.5, abs=0.03)
    shifted = sample_t(4000, torch.Generator().manual_seed(1), mean=1.0, std=0.5)
    assert shifted.median().item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)
    u = sample_t(4000, torch.Generator().manual_seed(2), dist="uniform")
    assert u.mean().item() == pytest.approx(0.5, abs=0.02)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.01)
    with pytest.raises(ValueError):
        sample_t(3, dist="beta")
