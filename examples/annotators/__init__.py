"""Example annotators: one torch, one transformers and one ONNX, each one file."""
