"""Fabstir: a pay-per-token LLM inference marketplace (SDK, host worker, CLI)."""

__version__ = "0.1.0"
