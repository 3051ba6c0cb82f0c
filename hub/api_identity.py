"""Routes of the hub API for enrollment, edge keys and revocation (filled in by their issue)."""

from __future__ import annotations

from typing import Final

from hub.apibase import Route

__all__ = ["ROUTES"]

ROUTES: Final[tuple[Route, ...]] = ()
