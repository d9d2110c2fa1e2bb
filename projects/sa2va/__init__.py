"""Sa2VA fine-tuning toolkit: models, datasets, evaluation, checkpoint I/O and configs."""
