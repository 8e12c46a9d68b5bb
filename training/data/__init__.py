"""Data sets for training: the procedurally generated Synthetic Earth (``training.data.synthetic``)."""
