"""fellrec: federated fine-tuning of LLM-based recommenders (FELLRec)."""

__version__ = "0.1.0"
