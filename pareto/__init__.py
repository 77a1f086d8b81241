"""pareto: a control plane for multi-objective, Pareto alignment of language models."""

__version__ = "0.1.0"
