"""Foundations every measure uses: input validation, pairs and their
aggregation, result types, the input forms of ``layer_scores``, progress,
atomic files, locks, text inputs, the per-layer table, device checks."""
