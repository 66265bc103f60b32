"""horizontal_mean: a built-in operator that needs no LLM, to exercise the whole orchestration.

Each label trainer contributes a seeded random vector per round through xfed.aggregation (the
same plain / otp path the LLM operator uses); every node checks the aggregate against the mean it
can recompute from the seeds. See `config.Params` for the knobs.
"""
from xfed.operators.horizontal_mean.operator import run

__all__ = ["run"]
