"""Experiments run by the project on its own tools; results in docs/experiments.md."""
