"""DanceOPD math core: flow-matching conventions, samplers, guidance, routing, query sampling, losses.

Plain torch only (no model libraries, no training plumbing). Conventions are documented in
:mod:`danceopd.core.flow`.
"""

from .cfg import cfg_combine, cfg_combine_edit
from .flow import (
    VelocityField,
    batch_time,
    euler_step,
    euler_update,
    expand_time,
    interpolate,
    logit_normal_pdf,
    ode_sample,
    sample_t,
    shift_time,
    timesteps,
    velocity_target,
    x0_from_velocity,
)
from .losses import (
    binned_loss,
    dense_ode_kl,
    group_advantages,
    kl_reward,
    ppo_clip_loss,
    transition_kl,
    velocity_mse,
)
from .query import (
    BETA_PARAMS,
    QUERY_BIASES,
    beta_int_sample,
    query_bias_mean,
    query_bias_pdf,
    sample_query_indices,
    sample_query_u,
    u_to_index,
)
from .rollout import RolloutStates, accepts_rows, full_rollout, rollout_to_queries, sde_rollout
from .routes import ROUTE_MODES, Route, RouteSampler
from .sde import gaussian_log_prob, sde_sigma, sde_step, sde_transition

__all__ = [
    "BETA_PARAMS",
    "QUERY_BIASES",
    "ROUTE_MODES",
    "RolloutStates",
    "Route",
    "RouteSampler",
    "VelocityField",
    "batch_time",
    "beta_int_sample",
    "binned_loss",
    "cfg_combine",
    "cfg_combine_edit",
    "dense_ode_kl",
    "euler_step",
    "euler_update",
    "expand_time",
    "full_rollout",
    "gaussian_log_prob",
    "group_advantages",
    "interpolate",
    "kl_reward",
    "logit_normal_pdf",
    "ode_sample",
    "ppo_clip_loss",
    "query_bias_mean",
    "query_bias_pdf",
    "accepts_rows",
    "rollout_to_queries",
    "sample_query_indices",
    "sample_query_u",
    "sample_t",
    "sde_rollout",
    "sde_sigma",
    "sde_step",
    "sde_transition",
    "shift_time",
    "timesteps",
    "transition_kl",
    "u_to_index",
    "velocity_mse",
    "velocity_target",
    "x0_from_velocity",
]
