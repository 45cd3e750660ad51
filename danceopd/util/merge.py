"""State-dict arithmetic: the weighted sum of identically shaped models (weight merging, a merged student init)."""

from __future__ import annotations

import torch


def merge_state_dicts(states: list[dict[str, torch.Tensor]], coefficients: list[float]) -> dict[str, torch.Tensor]:
    """sum_m c_m * theta_m over identically-shaped state dicts (coefficients need not sum to 1), on the device of
    the first."""
    if len(states) != len(coefficients) or not states:
        raise ValueError(f"need one coefficient per teacher: {len(states)} teachers, {len(coefficients)} coefficients")
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("teachers have different architectures; widen T2I models for editing before merging")
    return {k: sum(c * s[k].float().to(states[0][k].device) for c, s in zip(coefficients, states)) for k in keys}
