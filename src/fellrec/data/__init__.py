"""Data: readers, filtering, splits, training examples and client partitions."""
