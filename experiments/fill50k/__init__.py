"""A fill50k-style convergence experiment: does a ControlNet trained with cn-train learn to follow
its condition, and how suddenly? See docs/experiments.md and ``python -m experiments.fill50k --help``."""
