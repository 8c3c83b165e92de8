"""The honest-but-curious server, played during a run: what the split and the reports give away."""
