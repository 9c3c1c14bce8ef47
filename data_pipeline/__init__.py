"""Offline data pipeline (no JAX): constraints, reversal, pair recipes, tokenization, shards, Grain loader."""
