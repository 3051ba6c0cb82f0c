"""``python -m edge``: the same as the ``cairn-edge`` command."""

from edge.cli import main

raise SystemExit(main())
