"""Training engine pieces: runner, hooks."""
