"""Training methods on one engine: DanceOPD and every baseline it is compared against."""

from .base import Method, MethodConfig, StepContext, TeacherField
from .danceopd import DanceOPD
from .diffusionopd import DiffusionOPD
from .flowopd import FlowOPD
from .joint_sft import JointSFT
from .offpolicy import OffPolicy
from .soft_mix import SoftMix
from .weight_merge import WeightMerge, merge_state_dicts

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (DanceOPD, JointSFT, OffPolicy, SoftMix, WeightMerge, DiffusionOPD, FlowOPD)
}

__all__ = ["METHODS", "Method", "MethodConfig", "StepContext", "TeacherField", "merge_state_dicts"]
