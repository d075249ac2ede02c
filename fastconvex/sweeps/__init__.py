"""``fastconvex.sweep``: every layer of many layer stores, one resumable task
per layer, run locally or on Ray through :mod:`fastconvex.runners`; the
tasks, the reuse of finished results, the Euclidean variant, the outputs."""
