"""Job bodies, one module per kind: each takes a ``JobContext`` and returns the job's metrics."""
