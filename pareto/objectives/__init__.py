"""Objectives, reward vectors, normalisation and scalarizers: the core's view of "what to maximise"."""

from pareto.objectives.base import Objective, RunningZScore, VectorReward
from pareto.objectives.scalarize import SCALARIZERS, aggregate_losses, scalarize

__all__ = ["Objective", "RunningZScore", "VectorReward", "SCALARIZERS", "aggregate_losses", "scalarize"]
