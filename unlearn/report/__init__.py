"""Tables from run results: one run's summary, and mean ± std over many runs."""
