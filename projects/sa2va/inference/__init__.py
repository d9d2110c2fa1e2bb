"""Inference: a predictor (greedy generation + masks per [SEG]) separate from the training model."""
