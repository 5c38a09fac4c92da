"""unlearn: a research framework for LLM unlearning (BLUR and baselines)."""

__version__ = "0.1.0"
