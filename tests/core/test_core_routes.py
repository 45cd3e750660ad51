import pytest
import torch

from danceopd.core import Route, RouteSampler


def _routes():
    return [
        Route("t2i", "prompts", "teacher_t2i", 1.0),
        Route("edit", "edits", "teacher_edit", 2.0),
        Route("count", "counting", "teacher_count", 7.0),
    ]


def test_hard_routing_frequencies_follow_weights():
    sampler = RouteSampler(_routes(), seed=0)
    n = 3000
    draws = [sampler.sample() for _ in range(n)]
    assert all(len(d) == 1 for d in draws)
    counts = torch.bincount(torch.tensor([d[0] for d in draws]), minlength=3).double() / n
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), rtol=0, atol=0.03)
    torch.testing.assert_close(sampler.probabilities, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64))
    assert sampler.steps == n


def test_group_mode_returns_all_routes():
    sampler = RouteSampler(_routes(), seed=0, mode="group")
    for _ in range(5):
        assert sampler.sample() == [0, 1, 2]
    assert [r.name for r in sampler.sample_routes()] == ["t2i", "edit", "count"]


def test_same_seed_same_sequence_different_seed_differs():
    a = [RouteSampler(_routes(), seed=3).sample()[0] for _ in range(1)]
    s1, s2, s3 = RouteSampler(_routes(), 3), RouteSampler(_routes(), 3), RouteSampler(_routes(), 4)
    seq1 = [s1.sample()[0] for _ in range(50)]
    assert seq1 == [s2.sample()[0] for _ in range(50)]
    assert seq1 != [s3.sample()[0] for _ in range(50)]
    assert a[0] == seq1[0]


def test_state_dict_round_trip_continues_sequence():
    sampler = RouteSampler(_routes(), seed=11)
    for _ in range(17):
        sampler.sample()
    state = sampler.state_dict()
    assert state["generator_state"].dtype == torch.uint8
    expected = [sampler.sample()[0] for _ in range(40)]

    resumed = RouteSampler(_routes(), seed=999)  # seed is overwritten by the checkpoint
    resumed.load_state_dict(state)
    assert resumed.steps == 17 and resumed.seed == 11
    assert [resumed.sample()[0] for _ in range(40)] == expected

    fresh = RouteSampler(_routes(), seed=11)
    assert [fresh.sample()[0] for _ in range(57)][17:] == expected


def test_load_state_dict_rejects_changed_routes():
    state = RouteSampler(_routes(), seed=0).state_dict()
    with pytest.raises(ValueError, match="route names"):
        RouteSampler(_routes()[:2], seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        RouteSampler(_routes(), seed=0, mode="group").load_state_dict(state)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf"), "heavy"])
def test_bad_weights_raise(weight):
    with pytest.raises(ValueError, match="weight"):
        Route("r", "b", "t", weight)


@pytest.mark.parametrize("field", ["name", "bucket", "teacher"])
def test_empty_names_raise(field):
    kwargs = {"name": "r", "bucket": "b", "teacher": "t"}
    kwargs[field] = "  "
    with pytest.raises(ValueError, match=field):
        Route(**kwargs)


def test_sampler_validation():
    with pytest.raises(ValueError, match="at least one"):
        RouteSampler([], seed=0)
    with pytest.raises(ValueError, match="unique"):
        RouteSampler([Route("a", "b", "t"), Route("a", "c", "u")], seed=0)
    with pytest.raises(ValueError, match="mode"):
        RouteSampler(_routes(), seed=0, mode="soft")
