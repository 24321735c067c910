"""A model in this process: the contract, the runner and what it needs."""
