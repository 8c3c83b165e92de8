"""Recommender models over Hugging Face backbones, with peft adapters."""
