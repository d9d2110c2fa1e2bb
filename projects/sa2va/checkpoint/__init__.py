"""Checkpoint I/O: official Hugging Face folders, trainable-weight checkpoints, exports."""
