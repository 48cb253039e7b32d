"""Engines run the per-input :class:`controlnet.dataset.pipeline.Pipeline` over a build's inputs
and yield processed chunks in input order: ``local`` (a process pool on this machine)."""
