"""Network modules of the neural annotators, one file per architecture (imported lazily)."""
