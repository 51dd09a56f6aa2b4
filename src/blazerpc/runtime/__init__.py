"""Where model calls run: the registry, the executor that bridges sync and async, the batcher."""
