"""``python -m hub``: the same as the ``cairn-hub`` command."""

from hub.cli import main

raise SystemExit(main())
