"""``python -m simulator``: the same as ``cairn-sim``."""

from simulator.cli import main

raise SystemExit(main())
