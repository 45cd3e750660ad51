"""Routes: which (data bucket, teacher field) pair supervises the student at an optimizer step.

A :class:`Route` names a data bucket (where prompts / source images come from) and the teacher field
that provides ``v_teacher`` for it. :class:`RouteSampler` decides the routes of each optimizer step:

* ``mode="hard"``: one route per step, drawn with probability proportional to ``weight``;
* ``mode="group"``: all ``M`` routes every step (group size ``G = M``).

The sampler owns its ``torch.Generator``; :meth:`RouteSampler.state_dict` stores the generator state so
a resumed run draws exactly the same sequence of routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

ROUTE_MODES = ("hard", "group")


@dataclass
class Route:
    """One supervision route.

    Attributes:
        name: unique route name (e.g. ``"t2i_counting"``).
        bucket: name of the data bucket the step's batch is drawn from.
        teacher: name of the teacher field that supervises this bucket.
        weight: relative sampling weight (> 0, finite) for hard routing.
    """

    name: str
    bucket: str
    teacher: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        for field_name in ("name", "bucket", "teacher"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Route.{field_name} must be a non-empty string, got {value!r}")
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            raise ValueError(f"Route {self.name!r}: weight must be a number, got {self.weight!r}") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"Route {self.name!r}: weight must be finite and > 0, got {self.weight!r}")
        self.weight = weight


class RouteSampler:
    """Draws route indices for each optimizer step.

    Args:
        routes: the ``M`` routes (non-empty, unique names).
        seed: seed of the sampler's own CPU ``torch.Generator``.
        mode: ``"hard"`` (one weighted route per step) or ``"group"`` (all routes every step).
    """

    def __init__(self, routes: list[Route] | tuple[Route, ...], seed: int, mode: str = "hard"):
        routes = list(routes)
        if not routes:
            raise ValueError("RouteSampler needs at least one route")
        for route in routes:
            if not isinstance(route, Route):
                raise ValueError(f"expected Route objects, got {type(route).__name__}")
        names = [route.name for route in routes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"route names must be unique, duplicated: {duplicates}")
        if mode not in ROUTE_MODES:
            raise ValueError(f"unknown routing mode {mode!r}; expected one of {ROUTE_MODES}")
        self.routes = routes
        self.seed = int(seed)
        self.mode = mode
        self.steps = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        weights = torch.tensor([route.weight for route in routes], dtype=torch.float64)
        self._probs = weights / weights.sum()

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def probabilities(self) -> Tensor:
        """Hard-routing probabilities ``[M]`` (float64), proportional to the weights."""
        return self._probs.clone()

    def sample(self) -> list[int]:
        """Route indices for the next optimizer step: ``[i]`` in hard mode, ``[0, ..., M-1]`` in group mode."""
        self.steps += 1
        if self.mode == "group":
            return list(range(len(self.routes)))
        index = torch.multinomial(self._probs, 1, generator=self.generator)
        return [int(index.item())]

    def sample_routes(self) -> list[Route]:
        """Like :meth:`sample` but returns the :class:`Route` objects."""
        return [self.routes[i] for i in self.sample()]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the exact draw sequence (generator state as a uint8 tensor)."""
        return {
            "seed": self.seed,
            "mode": self.mode,
            "route_names": [route.name for route in self.routes],
            "steps": self.steps,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the routes and mode must match the saved ones."""
        names = [route.name for route in self.routes]
        if list(state["route_names"]) != names:
            raise ValueError(
                f"route names changed since the checkpoint: saved {state['route_names']}, now {names}"
            )
        if state["mode"] != self.mode:
            raise ValueError(
                f"routing mode changed since the checkpoint: saved {state['mode']!r}, now {self.mode!r}"
            )
        generator_state = torch.as_tensor(state["generator_state"], dtype=torch.uint8).cpu()
        self.generator.set_state(generator_state)
        self.seed = int(state["seed"])
        self.steps = int(state["steps"])
