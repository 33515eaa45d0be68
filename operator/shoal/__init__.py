"""Shoal: fleets of small, fine-tuned language models on Kubernetes."""

__version__ = "0.1.0"
