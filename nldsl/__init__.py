"""nldsl: write, check, draw, compile and run Nested Learning models.

Importing `nldsl` is cheap (no torch): parsing, checking, drawing and formatting never need it.
"""

__version__ = "0.1.0"
