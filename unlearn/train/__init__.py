"""The unlearning loop and the pieces it is built from (backends, optimizers, diagnostics)."""
