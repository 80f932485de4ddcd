"""`python -m nldsl` is the `nldsl` command."""

from .cli import main

raise SystemExit(main())
