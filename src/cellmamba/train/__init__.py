"""Pretraining: data loading over token shards, objectives, and the training loop."""
