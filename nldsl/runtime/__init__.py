"""The runtime: the layers, memories and training loop that generated modules call."""
