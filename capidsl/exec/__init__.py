"""The executor: runs a compiled Plan with one generic JAX training loop (reads the Plan only)."""
