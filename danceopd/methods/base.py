"""What a training method is: a loss for one route's micro-batch, computed from the student and teacher fields,
plus the small typed config it reads.

A method is one file under ``danceopd/methods/``: a ``Method`` subclass with a ``name`` registers itself in
``METHODS`` when the class is defined, and its ``Config`` dataclass names the top-level YAML sections it reads
(``rollout:``, ``query:``, ``flowopd:``, ...; each field's type is that section's dataclass). The distillation
config accepts every section some registered method declares (``SECTIONS``), so adding a method never edits the
trainer, the config classes or a list of names.

Methods see models only through the backend protocol (``danceopd.backends.base.Backend``: ``encode``,
``velocity``, ``guided_field``, ``timesteps``, ``latent_shape``, ``encode_images``) and the math in
``danceopd.core``; the trainer (``danceopd.train.loop``) owns data, routing, optimizers and checkpoints.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch

from ..backends.base import Backend, Field
from ..core import QUERY_BIASES


# ---- config sections shared by several methods ----------------------------------------------------------------------
@dataclass
class RolloutConfig:
    """``rollout:``: the student's own sampler on the rollouts that produce training states."""

    steps: int = 8
    shift: float = 1.0
    text_scale: float = 1.0      # guidance of the student's own rollout (beta; 1 = CFG absorbed)

    def validate(self):
        if not 1 <= self.steps <= 256:
            raise ValueError("rollout.steps must be in [1, 256]")


@dataclass
class QueryConfig:
    """``query:``: how many states per rollout are supervised, and where on the time grid."""

    k: int = 1
    bias: str = "low_t"

    def validate(self):
        if self.bias not in QUERY_BIASES:
            raise ValueError(f"query.bias must be one of {', '.join(QUERY_BIASES)}, got {self.bias!r}")
        if self.k < 1:
            raise ValueError("query.k must be >= 1")


@dataclass
class OnPolicyConfig:
    """The sections of a method that rolls the student out and queries K states of the rollout."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    query: QueryConfig = field(default_factory=QueryConfig)


@dataclass
class NoConfig:
    """A method that reads no section."""


# ---- the step's view of the models ----------------------------------------------------------------------------------
@dataclass
class TeacherField:
    """A frozen teacher as a field provider. ``text_scale``/``image_scale`` != 1 make it a CFG operator field
    (v_u + alpha (v_c - v_u)): the student then absorbs the guidance (CFG absorption)."""

    backend: Backend
    text_scale: float = 1.0
    image_scale: float = 1.0

    def field(self, prompts: list[str], sources: torch.Tensor | None) -> Field:
        src = sources if self.backend.is_edit else None
        return self.backend.guided_field(prompts, src, text_scale=self.text_scale, image_scale=self.image_scale)


C = TypeVar("C")


@dataclass
class StepContext(Generic[C]):
    """What a method's loss sees: the trainable student, the frozen teacher fields by route name, the method's own
    config, and two facts of the run (the SFT text dropout; the routes' weights, in route order)."""

    student: Backend
    teachers: dict[str, TeacherField]
    cfg: C
    device: torch.device = torch.device("cpu")
    text_dropout: float = 0.1
    route_weights: dict[str, float] = field(default_factory=dict)


# ---- the method and its registry ------------------------------------------------------------------------------------
METHODS: dict[str, type[Method]] = {}
SECTIONS: dict[str, type] = {}          # top-level YAML section -> its dataclass (union over registered methods)


def section_types(config_cls: type) -> dict[str, type]:
    """The fields of a method's ``Config``: {section name: section dataclass}."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def register(cls: type[Method]) -> type[Method]:
    """Put a method and its sections in the registries (done by ``Method.__init_subclass__`` for every subclass
    with a ``name``). A section name means one dataclass everywhere."""
    for name, tp in section_types(cls.Config).items():
        if SECTIONS.get(name, tp) is not tp:
            raise TypeError(f"method {cls.name!r}: section {name!r} is already a {SECTIONS[name].__name__}")
        SECTIONS[name] = tp
    METHODS[cls.name] = cls
    return cls


class Method(Generic[C]):
    """Subclasses set ``name``, ``Config`` and implement ``loss``. ``group_routes``: every route in every step
    (G = M). ``trains = False``: the student is exported as built (``student_init`` names how)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    group_routes: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    student_init: ClassVar[str | None] = None   # overrides ``student.init`` (weight merging: "merged")
    student_text_scale: ClassVar[float] = 1.0   # guidance the trained student samples with (CFG absorbed: 1.0)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            register(cls)

    @classmethod
    def config_from(cls, sections: dict[str, Any]) -> C:
        """The method's config from the parsed sections of a distillation config."""
        return cls.Config(**{n: sections[n] for n in section_types(cls.Config)})

    def check(self, cfg: C, batch_size: int) -> None:
        """Reject (ValueError) a config this method cannot train with, before anything loads."""

    def loss(self, ctx: StepContext[C], route, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


# ---- the flat view ----------------------------------------------------------------------------------------------------
@dataclass
class MethodConfig:
    """All methods' settings in one flat record, for scripts that call ``Method.loss`` directly
    (``scripts/bench_*.py``, ``scripts/gpu_check.py``): it answers each method's section attributes
    (``cfg.rollout.steps`` ...), so any method accepts it as ``ctx.cfg``. The trainer builds each method's own
    ``Config`` instead."""

    rollout_steps: int = 8
    rollout_shift: float = 1.0
    rollout_text_scale: float = 1.0
    k: int = 1
    bias: str = "low_t"
    offpolicy_states: str = "noised_data"
    eta: float = 0.7
    group_size: int = 4
    clip: float = 0.2

    @property
    def rollout(self) -> RolloutConfig:
        return RolloutConfig(self.rollout_steps, self.rollout_shift, self.rollout_text_scale)

    @property
    def query(self) -> QueryConfig:
        return QueryConfig(self.k, self.bias)

    def __getattr__(self, name: str):  # the sections of methods defined elsewhere (offpolicy:, flowopd:)
        tp = SECTIONS.get(name)
        if tp is None:
            raise AttributeError(name)
        flat = {f.name: getattr(self, f"{name}_{f.name}", None) for f in dataclasses.fields(tp)}
        flat = {k: v if v is not None else getattr(self, k, None) for k, v in flat.items()}
        return tp(**{k: v for k, v in flat.items() if v is not None})


def student_sources(ctx: StepContext, batch) -> torch.Tensor | None:
    """The batch's source images (None for T2I routes), on the student's device."""
    if batch.source is None or not bool(batch.has_source.any()):
        return None
    return batch.source.to(ctx.device)


def rollout_inputs(ctx: StepContext, batch, rollout: RolloutConfig) -> tuple[int, torch.Tensor | None, torch.Tensor]:
    """(batch size B, the batch's sources or None, the rollout's time grid ``[steps + 1]`` on the step's device)."""
    src = student_sources(ctx, batch)
    return len(batch.prompts), src, ctx.student.timesteps(rollout.steps, rollout.shift).to(ctx.device)


def repeat_k(prompts: list[str], sources: torch.Tensor | None, k: int):
    """Repeat each condition k times (row-major, matching ``x_q.flatten(0, 1)``)."""
    p = [q for q in prompts for _ in range(k)]
    return p, (None if sources is None else sources.repeat_interleave(k, dim=0))
