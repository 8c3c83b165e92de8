"""Aggregation math and federated strategies (pure functions and thin classes over them)."""
