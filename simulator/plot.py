"""``cairn-sim plot``: a PNG of a fleet file's first hours, one panel per generator.

Each panel shows one generator stream of the first device of its type, after its filters:
scalars against time, a GPS track as longitude/latitude, 3-axis vectors as three lines.
Readings labelled outlier are marked with red crosses, stuck ones in orange; dropouts leave
gaps. matplotlib (headless Agg backend) is the optional ``plot`` extra:
``pip install -e '.[plot]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import CairnError
from simulator.fleetfile import FleetFile
from simulator.parts import LABEL_OUTLIER, LABEL_STUCK

__all__ = ["plot_fleet"]

_MAX_POINTS = 200_000


class PlotUnavailableError(CairnError):
    def __init__(self) -> None:
        super().__init__("plotting needs matplotlib: pip install -e '.[plot]'")


def _pyplot() -> Any:
    try:
        import matplotlib as mpl  # noqa: PLC0415

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise PlotUnavailableError from None
    return plt


def plot_fleet(fleet: FleetFile, output: str | Path, *, hours: float = 24.0) -> int:
    """Write the PNG; returns the number of panels."""
    plt = _pyplot()
    panels: list[tuple[Any, ...]] = []
    for t in fleet.device_types:
        n = min(t.instants_in(hours * 3600.0), _MAX_POINTS)
        cols = t.device_columns(0, 0, n)
        hrs = np.arange(n) / t.rate_hz / 3600.0
        panels.extend((t, s, cols[s.key], hrs) for s in t.streams if s.generator is not None)
    ncols = 2 if len(panels) > 3 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (t, stream, col, hrs) in zip(axes.flat, panels, strict=False):
        x = col.x.copy()
        x[~col.emitted] = np.nan
        out = (col.labels & LABEL_OUTLIER).astype(bool) & col.emitted
        stuck = (col.labels & LABEL_STUCK).astype(bool) & col.emitted
        title = f"{t.name} {t.device_id(0)}: {stream.key} ({stream.generator})"
        if stream.filters:
            title += " + " + ", ".join(f.kind for f in stream.filters)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        if stream.generator == "gps":
            ax.plot(x[:, 1], x[:, 0], lw=0.8)
            ax.plot(x[out, 1], x[out, 0], "x", color="red", ms=5)
            ax.set_xlabel("longitude", fontsize=7)
            ax.set_ylabel("latitude", fontsize=7)
            continue
        for j, name in enumerate(col.names):
            label = None if len(col.names) == 1 else name
            if col.types[j] == "bool":
                ax.step(hrs, x[:, j], where="post", lw=0.8, label=label)
            else:
                ax.plot(hrs, x[:, j], lw=0.7, label=label)
            ax.plot(hrs[stuck], x[stuck, j], ".", color="orange", ms=2)
            ax.plot(hrs[out], x[out, j], "x", color="red", ms=5)
        if len(col.names) > 1:
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel("hours", fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return len(panels)
