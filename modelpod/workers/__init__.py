"""A model in worker processes: real parallelism and crash isolation."""
