"""Live training curves in a notebook: a clu metric writer that redraws a run's curves as it logs them.

    live = LiveCurves(label='resnet_atto ← slak_atto (kd)')
    train.train_and_evaluate(config, workdir, writers=[live])

The figure is drawn by plots.curves_figure (the one `report --plot` draws from event files) and shown
in the cell's output through IPython's display, replaced in place at each redraw; outside a notebook
nothing is shown (the scalars are still recorded in `series`).
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from clu import metric_writers

from lkd_jax.analysis import plots


class Panel(NamedTuple):
  """One plotted scalar: its tag, the panel's title and y label, and a factor (e.g. 100 for %)."""
  tag: str
  title: str
  ylabel: str
  scale: float = 1.0


# The method's loss, the cross-entropy with the batch's targets (comparable across methods) and the
# eval top-1 the trainer logs every `eval_every` steps and at the end.
DEFAULT_PANELS = (Panel('train/loss', 'train loss', 'loss'),
                  Panel('train/ce', 'train cross-entropy', 'CE'),
                  Panel('eval/accuracy', 'eval top-1', 'top-1 (%)', 100.0))


def ipython_show() -> Callable[[bytes], None]:
  """A function showing PNG bytes in the current notebook cell, replacing its previous figure (a
  no-op where IPython is not running a kernel)."""
  try:
    from IPython import get_ipython
    from IPython.display import Image, display
  except ImportError:
    return lambda png: None
  if get_ipython() is None:
    return lambda png: None
  handle = None

  def show(png: bytes) -> None:
    nonlocal handle
    if handle is None:
      handle = display(Image(data=png), display_id=True)
    else:
      handle.update(Image(data=png))
  return show


class LiveCurves(metric_writers.MetricWriter):
  """Records the scalars of `panels` and redraws them at most every `min_interval_s` seconds and at
  every flush (the trainer flushes once, at the end); `show` receives each figure as PNG bytes
  (default: ipython_show())."""

  def __init__(self, label: str = 'run', panels: Sequence[Panel] = DEFAULT_PANELS,
               min_interval_s: float = 2.0, show: Callable[[bytes], None] | None = None):
    self.label = label
    self.panels = tuple(panels)
    self.min_interval_s = min_interval_s
    self.series: dict[str, dict[int, float]] = {p.tag: {} for p in self.panels}
    self._show = show or ipython_show()
    self._last_draw = float('-inf')

  def figure_panels(self) -> list[dict[str, Any]]:
    """The recorded series as plots.curves_figure panels (one line each, steps ascending)."""
    out = []
    for p in self.panels:
      points = sorted(self.series[p.tag].items())
      lines = [{'label': self.label, 'x': [s for s, _ in points],
                'y': [p.scale * v for _, v in points], 'band': None}] if points else []
      out.append({'title': p.title, 'ylabel': p.ylabel, 'lines': lines})
    return out

  def png(self) -> bytes:
    """The current figure as PNG bytes."""
    buf = io.BytesIO()
    plots.curves_figure(self.figure_panels(), buf)
    return buf.getvalue()

  def draw(self) -> None:
    """Shows the current figure now."""
    self._last_draw = time.monotonic()
    self._show(self.png())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    new = [tag for tag in scalars if tag in self.series]
    for tag in new:
      self.series[tag][int(step)] = float(scalars[tag])
    if new and time.monotonic() - self._last_draw >= self.min_interval_s:
      self.draw()

  def flush(self) -> None:
    if any(self.series.values()):
      self.draw()

  # The trainer logs only scalars (and hyper-parameters once); everything else is ignored.
  def write_summaries(self, step, values, metadata=None) -> None:
    pass

  def write_images(self, step, images) -> None:
    pass

  def write_videos(self, step, videos) -> None:
    pass

  def write_audios(self, step, audios, *, sample_rate) -> None:
    pass

  def write_texts(self, step, texts) -> None:
    pass

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    pass

  def write_hparams(self, hparams) -> None:
    pass

  def close(self) -> None:
    pass
