"""Sources: one module per way readings arrive (``mqtt``), plus the payload parsers."""
