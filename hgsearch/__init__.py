"""hgsearch: budgeted Pareto search over Hourglass and conventional residual MLP shapes."""

__version__ = "0.1.0"
