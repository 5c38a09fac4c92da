"""Data layer: synthetic worlds, tokenizer training, prompt formatting, TOFU loading, benchmark preparation.

Submodules are imported explicitly (`from unlearn.data.format import QAFormatter`) rather than re-exported
here, so importing the light modules (format, tofu) does not pull in model training code.
"""
