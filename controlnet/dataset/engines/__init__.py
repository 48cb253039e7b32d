"""Engines run the per-input :class:`controlnet.dataset.pipeline.Pipeline` over a build's inputs:
``local`` (a process pool on this machine) yields processed chunks in input order for the builder
to write; ``ray`` (a Ray cluster, ``--engine ray``) has its tasks write whole shards and yields
their summaries in shard order."""
