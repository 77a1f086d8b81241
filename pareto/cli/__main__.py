"""`python -m pareto.cli ...`: the same commands as the `pareto` script."""

from pareto.cli import app

app()
