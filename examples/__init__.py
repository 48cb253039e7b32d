"""Worked examples, tested by tests/examples; see docs/adding-an-annotator.md."""
