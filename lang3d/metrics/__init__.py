"""Metrics as the benchmarks compute them, one metric a module (torchmetrics ``Metric`` s)."""
