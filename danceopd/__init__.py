"""danceopd: on-policy generative field distillation (DanceOPD) for flow-matching image generators."""

__version__ = "0.1.0"
