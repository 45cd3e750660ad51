import pytest
import torch

from danceopd.core import (
    RolloutStates,
    accepts_rows,
    full_rollout,
    gaussian_log_prob,
    ode_sample,
    rollout_to_queries,
    sample_query_indices,
    sde_rollout,
    timesteps,
    velocity_mse,
)


class CountingField:
    """Nonlinear analytic field ``v = sin(x) * (1 + t) + 0.3 * x`` that counts its calls."""

    def __init__(self):
        self.calls = 0
        self.batch_sizes = []

    def __call__(self, x_t, t):
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        assert t.shape == (x_t.shape[0],)
        return torch.sin(x_t) * (1 + t.reshape(-1, 1, 1)) + 0.3 * x_t


def _noise(batch=4, seed=0):
    return torch.randn(batch, 3, 5, generator=torch.Generator().manual_seed(seed))


def test_rollout_to_queries_matches_full_rollout_exactly():
    n = 8
    grid = timesteps(n, 3.0)
    noise = _noise()
    query_idx = torch.tensor([[0, 2], [3, 3], [1, 5], [2, 4]])
    field = CountingField()
    out = rollout_to_queries(field, noise, grid, query_idx)
    assert isinstance(out, RolloutStates)
    assert out.x_q.shape == (4, 2, 3, 5)
    assert out.t_q.shape == (4, 2) and out.t_next.shape == (4, 2)
    states, grid_out = full_rollout(CountingField(), noise, grid)
    assert torch.equal(grid_out, grid)
    for b in range(4):
        for j in range(2):
            i = query_idx[b, j].item()
            assert torch.equal(out.x_q[b, j], states[i, b])
            assert out.t_q[b, j].item() == grid[i].item()
            assert out.t_next[b, j].item() == grid[i + 1].item()
    # exactly max(query_idx) batched forward passes, no wasted steps
    assert out.n_forward == 5 == field.calls
    assert field.batch_sizes == [4] * 5


class RowField(CountingField):
    """The same field, evaluated on a subset of the batch rows (records which)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def __call__(self, x_t, t, rows=None):
        self.rows.append(None if rows is None else rows.tolist())
        return super().__call__(x_t, t)


def test_per_row_rollout_drops_rows_at_their_deepest_query_and_keeps_the_states():
    n = 8
    grid = timesteps(n, 3.0)
    noise = _noise()
    noise_copy = noise.clone()
    query_idx = torch.tensor([[0, 2], [3, 3], [1, 5], [2, 4]])      # deepest per row: 2, 3, 5, 4
    field = RowField()
    out = rollout_to_queries(field, noise, grid, query_idx, per_row=True)
    states, _ = full_rollout(CountingField(), noise, grid)
    for b in range(4):
        for j in range(2):
            torch.testing.assert_close(out.x_q[b, j], states[query_idx[b, j].item(), b], rtol=1e-6, atol=1e-6)
    assert torch.equal(noise, noise_copy)                              # the caller's noise is not written to
    # steps 0, 1: all rows; step 2: rows 1-3; step 3: rows 2, 3; step 4: row 2 only
    assert field.rows == [None, None, [1, 2, 3], [2, 3], [2]]
    assert field.batch_sizes == [4, 4, 3, 2, 1]
    assert out.n_forward == 5 and out.row_evals == 2 + 3 + 5 + 4 == sum(field.batch_sizes)
    whole = rollout_to_queries(CountingField(), noise, grid, query_idx)
    assert whole.row_evals == 4 * 5


def test_accepts_rows():
    assert accepts_rows(RowField()) and not accepts_rows(CountingField())
    assert accepts_rows(lambda x, t, rows=None: x) and not accepts_rows(lambda x, t: x)


def test_rollout_with_only_initial_queries_needs_no_forward():
    field = CountingField()
    noise = _noise(2)
    out = rollout_to_queries(field, noise, timesteps(4), torch.zeros(2, 1, dtype=torch.long))
    assert out.n_forward == 0 and field.calls == 0
    assert torch.equal(out.x_q[:, 0], noise)
    assert torch.all(out.t_q == 1.0)


def test_rollout_states_are_detached_but_usable_with_grad():
    w = torch.nn.Parameter(torch.tensor(0.7))

    def student(x, t):
        return w * x + t.reshape(-1, 1, 1)

    grid = timesteps(6)
    noise = _noise(3)
    idx = sample_query_indices(3, 6, k=2, bias="low_t", generator=torch.Generator().manual_seed(0))
    out = rollout_to_queries(student, noise, grid, idx)
    assert not out.x_q.requires_grad and not out.x_q.is_inference()
    # student forward with grad at the queried states (flatten B x K into the batch)
    x = out.x_q.reshape(6, 3, 5)
    t = out.t_q.reshape(6)
    loss = velocity_mse(student(x, t), torch.zeros_like(x))
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad)


def test_rollout_validation():
    noise = _noise(2)
    grid = timesteps(4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        rollout_to_queries(CountingField(), noise, grid, torch.tensor([[4], [0]]))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        rollout_to_queries(CountingField(), noise, grid, torch.tensor([[-1], [0]]))
    with pytest.raises(ValueError, match="shape"):
        rollout_to_queries(CountingField(), noise, grid, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        rollout_to_queries(CountingField(), noise, grid, torch.tensor([[0.0], [1.0]]))


def test_full_rollout_final_state_equals_ode_sample():
    noise = _noise(2, seed=1)
    grid = timesteps(5, 2.0)
    field = CountingField()
    states, _ = full_rollout(field, noise, grid)
    assert states.shape == (6, 2, 3, 5) and field.calls == 5
    assert torch.equal(states[0], noise)
    assert torch.equal(states[-1], ode_sample(CountingField(), noise, grid))


def test_sde_rollout_shapes_log_probs_and_determinism():
    noise = _noise(3, seed=2)
    grid = timesteps(4)
    states, log_probs, means, stds = sde_rollout(
        CountingField(), noise, grid, eta=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert states.shape == (5, 3, 3, 5) and log_probs.shape == (4, 3)
    assert means.shape == (4, 3, 3, 5) and stds.shape == (4, 3, 1, 1)
    assert torch.equal(states[0], noise)
    for i in range(4):
        torch.testing.assert_close(log_probs[i], gaussian_log_prob(states[i + 1], means[i], stds[i]))
    again = sde_rollout(CountingField(), noise, grid, eta=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], states)
    other = sde_rollout(CountingField(), noise, grid, eta=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], states)
    with pytest.raises(ValueError, match="eta"):
        sde_rollout(CountingField(), noise, grid, eta=0.0)
