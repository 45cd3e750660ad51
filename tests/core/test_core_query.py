import math

import pytest
import torch

from danceopd.core import (
    BETA_PARAMS,
    QUERY_BIASES,
    beta_int_sample,
    query_bias_mean,
    query_bias_pdf,
    sample_query_indices,
    sample_query_u,
    u_to_index,
)

N = 20000


@pytest.mark.parametrize("bias", QUERY_BIASES)
def test_u_mean_matches_bias(bias):
    u = sample_query_u(N, 1, bias, generator=torch.Generator().manual_seed(0))
    assert u.shape == (N, 1) and u.dtype == torch.float32
    assert torch.all((u >= 0) & (u < 1))
    expected = query_bias_mean(bias)
    if bias in BETA_PARAMS:
        a, b = BETA_PARAMS[bias]
        assert expected == pytest.approx(a / (a + b))
    assert u.mean().item() == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("a,b", [(5, 2), (5, 5), (2, 5), (1, 1), (3, 1)])
def test_beta_order_statistic_moments(a, b):
    u = beta_int_sample(a, b, (N,), generator=torch.Generator().manual_seed(1)).double()
    mean = a / (a + b)
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    assert u.mean().item() == pytest.approx(mean, abs=0.01)
    assert u.var().item() == pytest.approx(var, rel=0.06)
    with pytest.raises(ValueError):
        beta_int_sample(2.5, 1, (3,))


def test_low_t_points_to_clean_end_and_high_t_to_noise_end():
    n = 10
    low = sample_query_indices(4000, n, bias="low_t", generator=torch.Generator().manual_seed(0))
    high = sample_query_indices(4000, n, bias="high_t", generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.int64 and low.shape == (4000, 1)
    assert low.min() >= 0 and low.max() <= n - 1
    assert low.double().mean().item() > n / 2
    assert high.double().mean().item() < n / 2
    # index histogram follows the Beta(5, 2) mass in each bin
    counts = torch.bincount(low[:, 0], minlength=n).double() / 4000
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    pdf = query_bias_pdf("low_t")(grid)
    for i in range(n):
        mask = (grid >= i / n) & (grid <= (i + 1) / n)
        mass = torch.trapezoid(pdf[mask], grid[mask]).item()
        assert counts[i].item() == pytest.approx(mass, abs=0.025)


def test_stratified_covers_every_stratum():
    k, n = 4, 12
    u = sample_query_u(500, k, "stratified", generator=torch.Generator().manual_seed(2))
    strata = torch.floor(u * k).long()
    assert torch.equal(strata, torch.arange(k).expand(500, k))
    idx = u_to_index(u, n)
    assert torch.all(idx[:, 1:] > idx[:, :-1])  # distinct and sorted when k <= n
    for j in range(k):
        assert torch.all((idx[:, j] >= j * n // k) & (idx[:, j] < (j + 1) * n // k))


def test_k_queries_are_sorted_and_deterministic():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = sample_query_indices(64, 8, k=3, bias="mid_t", generator=g1)
    b = sample_query_indices(64, 8, k=3, bias="mid_t", generator=g2)
    assert a.shape == (64, 3) and torch.equal(a, b)
    assert torch.all(a[:, 1:] >= a[:, :-1])
    c = sample_query_indices(64, 8, k=3, bias="mid_t", generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


def test_u_to_index_map():
    u = torch.tensor([0.0, 0.099, 0.1, 0.55, 0.999999, 1.0])
    assert u_to_index(u, 10).tolist() == [0, 0, 1, 5, 9, 9]
    assert u_to_index(u, 1).tolist() == [0] * 6


@pytest.mark.parametrize("bias", QUERY_BIASES)
def test_pdf_integrates_to_one(bias):
    grid = torch.linspace(0, 1, 4001, dtype=torch.float64)[:-1]
    pdf = query_bias_pdf(bias)(grid)
    assert torch.all(pdf >= 0)
    assert torch.trapezoid(pdf, grid).item() == pytest.approx(1.0, abs=2e-3)
    assert query_bias_pdf(bias)(torch.tensor([-0.5, 1.5], dtype=torch.float64)).tolist() == [0.0, 0.0]


def test_beta_pdf_value():
    # Beta(5, 2) density at 0.5: 0.5^4 * 0.5 / B(5, 2), B(5, 2) = 4! 1! / 6! = 1/30
    val = query_bias_pdf("low_t")(torch.tensor([0.5], dtype=torch.float64)).item()
    assert val == pytest.approx(30 * 0.5**5)
    assert math.isclose(query_bias_mean("uniform"), 0.5)


def test_unknown_bias_raises():
    with pytest.raises(ValueError, match="bias"):
        sample_query_indices(2, 4, bias="late")
    with pytest.raises(ValueError, match="bias"):
        query_bias_pdf("late")
