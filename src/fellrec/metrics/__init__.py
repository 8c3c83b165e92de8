"""Ranking metrics, balance statistics and the popularity baseline (pure functions)."""
