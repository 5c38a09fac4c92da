"""Models: hub loading and tiny Llama construction (build.py), embedded target/retain models trained from
scratch and cached on disk (embedded.py, cache.py)."""
