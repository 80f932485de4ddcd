"""The compiler: lowers a level graph to a readable, torch.compile-ready Python module."""
