"""Training a ControlNet on a cn-annotate dataset: the trainer, its data pipeline and export."""
