"""Figures as PNG files (matplotlib's Agg canvas, no pyplot state): ERF heatmaps and training curves.

Sizes are fixed (no tight bounding box), so a figure's pixel size follows from its panel count:
`erf_figure_px` and `curves_figure_px`.
"""
from __future__ import annotations

from typing import IO, Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

DPI = 100
ERF_PANEL_IN = (4.0, 4.6)    # width, height per ERF panel (map, title and caption)
ERF_MAP_IN = 3.5             # side of the map itself
ERF_COLORBAR_IN = 0.8
CURVES_PANEL_IN = (6.0, 4.5)  # width, height per curves panel

# RepLKNet's analyze_erf draws the [0, 1] map with seaborn's coolwarm centred at 0, i.e. the upper
# half of coolwarm (white to red); the same colours on a [0, 1] scale.
ERF_CMAP = LinearSegmentedColormap.from_list('erf', colormaps['coolwarm'](np.linspace(0.5, 1.0, 256)))


def erf_figure_px(n: int) -> tuple[int, int]:
  """(width, height) in pixels of an ERF figure with `n` maps."""
  return (round((n * ERF_PANEL_IN[0] + ERF_COLORBAR_IN) * DPI), round(ERF_PANEL_IN[1] * DPI))


def erf_figure(maps: Sequence[np.ndarray], titles: Sequence[str], captions: Sequence[str],
               out: str) -> None:
  """Normalised ERF maps (values in [0, 1]) side by side on one colour scale, each titled and
  captioned; written to `out` as PNG."""
  n = len(maps)
  w_px, h_px = erf_figure_px(n)
  fig = Figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
  FigureCanvasAgg(fig)
  width, height = w_px / DPI, h_px / DPI
  bottom, side = 0.55 / height, ERF_MAP_IN / height
  image = None
  for i, (m, title, caption) in enumerate(zip(maps, titles, captions, strict=True)):
    left = (i * ERF_PANEL_IN[0] + (ERF_PANEL_IN[0] - ERF_MAP_IN) / 2) / width
    ax = fig.add_axes((left, bottom, ERF_MAP_IN / width, side))
    image = ax.imshow(m, cmap=ERF_CMAP, vmin=0.0, vmax=1.0, interpolation='antialiased')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, wrap=True)
    ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha='center', va='top', fontsize=7,
            wrap=True)
  cax = fig.add_axes(((n * ERF_PANEL_IN[0] + 0.1) / width, bottom, 0.2 / width, side))
  fig.colorbar(image, cax=cax)
  fig.savefig(out, dpi=DPI, format='png')


def curves_figure_px(n: int) -> tuple[int, int]:
  """(width, height) in pixels of a curves figure with `n` panels side by side."""
  return round(n * CURVES_PANEL_IN[0] * DPI), round(CURVES_PANEL_IN[1] * DPI)


def curves_figure(panels: Sequence[dict[str, Any]], out: str | IO[bytes],
                  epoch_axis: float | None = None) -> None:
  """Line plots written to `out` (a path or a binary file object) as PNG. Each panel: {'title',
  'ylabel', 'lines': [{'label', 'x', 'y', 'band' (None or (low, high)), 'dashed' (optional)}]};
  `epoch_axis` (steps per epoch) adds an epoch axis on top."""
  w_px, h_px = curves_figure_px(len(panels))
  fig = Figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, panel in zip(axes, panels):
    for k, line in enumerate(panel['lines']):
      colour = f'C{k % 10}'
      few = len(line['x']) <= 30  # e.g. evaluated only at the end: a lone point needs a marker
      ax.plot(line['x'], line['y'], color=colour, label=line['label'], lw=1.5,
              ls='--' if line.get('dashed') else '-', marker='o' if few else None, ms=3)
      if line.get('band') is not None:
        ax.fill_between(line['x'], *line['band'], color=colour, alpha=0.2, lw=0)
    ax.set_title(panel['title'], fontsize=10)
    ax.set_xlabel('step')
    ax.set_ylabel(panel['ylabel'])
    ax.grid(alpha=0.3)
    if panel['lines']:
      ax.legend(fontsize=7)
    if epoch_axis:
      top = ax.secondary_xaxis('top', functions=(lambda s: s / epoch_axis,
                                                 lambda e: e * epoch_axis))
      top.set_xlabel('epoch')
  fig.savefig(out, dpi=DPI, format='png')
