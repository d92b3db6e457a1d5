"""Progress of long work: set-up status lines, then per-iteration rows, on a terminal or in a log file.

The CLI makes one :class:`ProgressReporter` per command and hands it, as the ``progress`` callback, to the
code that does the work (:func:`hpc_pt.reconstruct`, the 2D ptychography solvers, the simulator). That code
only calls it; it knows nothing of terminals. The calls are

* ``progress.status(text)``: a set-up step begins (``"reading 4,218 frames of 63x63 (67 MB)"``);
  ``progress.status(None)`` ends it (so does the next status, phase or row), ``status(None, ok=False)``
  ends it as failed. Every step is reported with its duration. :func:`step` wraps a block in such a pair.
* ``progress.start(label, total, unit=..., tag=..., key=...)``: a counted phase begins (a method's
  iterations, one stage of the two-step method, the simulator's angles). :class:`StageTracker` starts the
  phase of each stage of a multi-stage solver from the rows' ``stage`` column.
* ``progress(row)``: one iteration's history row (``{"iteration": 7, "objective": ..., "r_factor": ...}``;
  the phase's ``key`` column is the index i of i/N).

Any callable taking a row works as ``progress`` too (``list.append``, a test's hook): :func:`step` and
:func:`start_phase` skip the methods it lacks.

Renderings. On a terminal (the output stream is a TTY and not a dumb terminal) one ``rich`` progress bar
shows the current phase: label, bar, i/N, objective, R-factor, elapsed and ETA (set-up steps show a spinner,
then one line each with their time). Otherwise (redirected to a file, e.g. a SLURM log) every event is one
plain line, flushed at once, with no carriage returns and no ANSI codes::

    reading 4,218 frames of 63x63 (67 MB)...
    reading 4,218 frames of 63x63 (67 MB): done in 12.3 s
    apt: 50 iterations
    iter  1/50  objective 1.234e+05  R-factor 0.2345  elapsed 0:00:41  ETA 0:21:08

A row line is printed for the first row of every phase, its last row (i = N, or the last row seen when the
phase ends early), and in between when ``interval_s`` seconds (default :data:`DEFAULT_INTERVAL_S`) have
passed since the previous row line, or, with ``every`` K > 0, at every K-th iteration. Slow iterations
(longer than ``interval_s``) therefore get one line each, fast ones one line every ``interval_s``.
``elapsed`` counts from the reporter's creation (the start of the command); ``ETA`` is the phase's remaining
iterations times its mean time per iteration, measured from its second row on (at the first row: that row's
``iter_time_s``), so a solver's set-up before iteration 1 does not inflate it. A row with ``iter_time_s``
that ends an open set-up step (the pipeline's "setting up gd ...", ended by iteration 1) dates the step's
end that many seconds back, so the step's time excludes iteration 1.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from contextlib import contextmanager

from .errors import InputError

#: seconds between two plain row lines (when neither the first nor the last row of a phase)
DEFAULT_INTERVAL_S = 10.0

#: row columns shown after i/N, in this order, with their display names
ROW_FIELDS = (("objective", "objective"), ("r_factor", "R-factor"), ("primal_residual", "primal residual"),
              ("residual", "residual"))

__all__ = ["DEFAULT_INTERVAL_S", "ProgressReporter", "StageTracker", "describe_frames", "format_bytes",
           "format_duration", "parse_every", "report_status", "start_phase", "step"]


def parse_every(text) -> tuple[int, float]:
    """The ``--progress-every`` value as (every K iterations, every T seconds).

    ``"5"`` -> (5, 0.0): a line every 5th iteration; ``"30s"`` -> (0, 30.0): a line every 30 s; None ->
    (0, :data:`DEFAULT_INTERVAL_S`).

    Raises
    ------
    InputError
        For anything else (one line naming the value and the accepted forms).
    """
    if text is None:
        return 0, DEFAULT_INTERVAL_S
    s = str(text).strip().lower()
    try:
        if s.endswith("s"):
            t = float(s[:-1])
            if math.isfinite(t) and t > 0:
                return 0, t
        else:
            k = int(s)
            if k > 0:
                return k, 0.0
    except ValueError:
        pass
    raise InputError(f"--progress-every {text!r} is not a positive iteration count or duration; use e.g. "
                     "--progress-every 5 (every 5th iteration) or --progress-every 30s (every 30 seconds)")


def format_duration(seconds) -> str:
    """``h:mm:ss`` (``-:--:--`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(max(float(seconds), 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_bytes(n) -> str:
    """Decimal size: ``"512 B"``, ``"67 MB"``, ``"1.2 GB"``."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # not reached


def describe_frames(n_frames: int, frame_shape, itemsize: int, of: int | None = None) -> str:
    """``"4,218 frames of 63x63 (67 MB)"``; with ``of`` (all frames of a sharded input):
    ``"1,054 of 4,218 frames of 63x63 (17 MB)"``."""
    m1, m2 = (int(v) for v in frame_shape)
    nbytes = int(n_frames) * m1 * m2 * int(itemsize)
    count = f"{int(n_frames):,}" + (f" of {int(of):,}" if of is not None else "")
    return f"{count} frames of {m1}x{m2} ({format_bytes(nbytes)})"


@contextmanager
def step(progress, text: str):
    """Report the block as one set-up step of ``progress`` (a no-op without a ``status`` method)."""
    status = getattr(progress, "status", None)
    if status is None:
        yield
        return
    status(text)
    try:
        yield
    except BaseException:
        status(None, ok=False)
        raise
    status(None)


def report_status(progress, text: str | None, ok: bool = True) -> None:
    """``progress.status(text, ok)`` when ``progress`` has it (begin a step; None: end the current one)."""
    status = getattr(progress, "status", None)
    if status is not None:
        status(text) if text is not None else status(None, ok=ok)


def start_phase(progress, label: str, total, **kw) -> None:
    """``progress.start(label, total, **kw)`` when ``progress`` has it."""
    start = getattr(progress, "start", None)
    if start is not None:
        start(label, total, **kw)


class StageTracker:
    """Starts the phase of each stage of a multi-stage solver on ``progress``.

    ``stages`` is a list of dicts with ``stage`` (the value of the rows' ``stage`` column; None for a
    one-stage method), ``label``, ``total`` and optionally ``unit``, ``tag``, ``key`` (see
    :meth:`ProgressReporter.start`). :meth:`begin` starts a stage's phase up front; :meth:`row` starts the
    phase of a row's stage when it differs from the current one, then forwards the row.
    """

    def __init__(self, progress, stages: list[dict]):
        self.progress = progress
        self.stages = {s.get("stage"): s for s in stages}
        self.current = object()

    def begin(self, stage=None) -> None:
        spec = self.stages.get(stage)
        if spec is None:
            return
        self.current = stage
        kw = {k: spec[k] for k in ("unit", "tag", "key") if k in spec}
        start_phase(self.progress, spec["label"], spec["total"], **kw)

    def row(self, row: dict) -> None:
        stage = row.get("stage")
        if stage is not None:
            stage = int(stage)
        if stage != self.current and stage in self.stages:
            self.begin(stage)
        self.progress(row)


class _Phase:
    """One counted phase: its label, total, which row column counts, timing for the ETA."""

    def __init__(self, label, total, unit, tag, key, now):
        self.label, self.total, self.unit, self.tag, self.key = label, total, unit, tag, key
        self.t0 = now
        self.first_i = self.first_t = self.first_dt = None
        self.i = 0
        self.t_last = now
        self.last_line_i = None
        self.last_line_t = now
        self.pending = None  # the last row not printed yet (plain mode)

    def seconds_per_iteration(self):
        if self.first_i is None:
            return None
        if self.i > self.first_i:
            return (self.t_last - self.first_t) / (self.i - self.first_i)
        if self.first_dt is not None:  # one row so far: its own duration, when the row says
            return self.first_dt
        return (self.t_last - self.t0) / max(self.i, 1)  # else including the set-up before it

    def eta(self, now=None):
        """Seconds left (None before the first row or without a total)."""
        if self.total is None:
            return None
        per = self.seconds_per_iteration()
        if per is None:
            return None
        left = per * max(self.total - self.i, 0)
        if now is not None:
            left -= now - self.t_last
        return max(left, 0.0)


#: short names of the row columns for a narrow terminal (below :data:`WIDE_TERMINAL` columns)
SHORT_NAMES = {"objective": "obj", "r_factor": "R", "primal_residual": "r_p", "residual": "res"}
#: terminal width from which the bar shows the long field names and "elapsed" / "ETA" words
WIDE_TERMINAL = 120


def _fields_text(row: dict, short: bool = False) -> str:
    parts = []
    for key, name in ROW_FIELDS:
        v = row.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            parts.append(f"{SHORT_NAMES[key] if short else name} {v:.4g}")
    return (" " if short else "  ").join(parts)


class ProgressReporter:
    """Shows the progress of one command: set-up steps, then counted phases (see the module docstring).

    Parameters
    ----------
    file : text stream, optional
        Where to write (default: ``sys.stdout`` at the time of writing).
    terminal : bool, optional
        Force the rich bar (True) or plain lines (False); default: a rich bar when ``file`` is a terminal.
    every : int
        Plain mode: also a row line at every ``every``-th iteration (0: off).
    interval_s : float
        Plain mode: a row line when this many seconds passed since the previous one (0: off).
    clock : callable
        Seconds, monotonic (tests pass a fake clock).
    console : rich.console.Console, optional
        Render with this console (its ``is_terminal`` decides the mode unless ``terminal`` is given).

    Thread-safe: Dask delivers rows on the client's event-loop thread. Use it as a context manager, or call
    :meth:`close` at the end, to end the last step / phase and stop the bar.
    """

    def __init__(self, file=None, *, terminal: bool | None = None, every: int = 0,
                 interval_s: float = DEFAULT_INTERVAL_S, clock=time.monotonic, console=None):
        self._file = file
        self._clock = clock
        self.every = int(every or 0)
        self.interval_s = float(interval_s or 0.0)
        self.t0 = clock()
        self._lock = threading.RLock()
        self._status = None  # (text, start time, rich task id)
        self._phase: _Phase | None = None
        self._bar = None  # rich Progress, started lazily
        self._task = None
        self._closed = False
        if console is None and terminal is not False:
            stream = file if file is not None else sys.stdout
            isatty = getattr(stream, "isatty", None)
            if terminal or (isatty is not None and isatty()):
                from rich.console import Console

                console = Console(file=stream, force_terminal=True if terminal else None)
        self._console = console
        if terminal is None:
            terminal = console is not None and console.is_terminal and not console.is_dumb_terminal
        self.terminal = bool(terminal) and console is not None

    # -- the protocol ----------------------------------------------------------------------------------
    def status(self, text: str | None = None, ok: bool = True) -> None:
        """Begin the set-up step ``text`` (ending the previous one); None ends the current step."""
        with self._lock:
            self._end_status(ok)
            if text is None:
                return
            now = self._clock()
            task = None
            if self.terminal:
                bar = self._ensure_bar()
                task = bar.add_task(str(text), total=None, kind="status", start_t=now)
            else:
                self._line(f"{text}...")
            self._status = (str(text), now, task)

    def start(self, label: str, total, unit: str = "iterations", tag: str = "iter",
              key: str = "iteration") -> None:
        """Begin a counted phase of ``total`` steps (None: unknown); rows then count by column ``key``."""
        with self._lock:
            self._end_status(True)
            self._end_phase()
            now = self._clock()
            total = None if total is None else int(total)
            self._phase = _Phase(str(label), total, unit, tag, key, now)
            if self.terminal:
                bar = self._ensure_bar()
                self._task = bar.add_task(str(label), total=total, kind="phase", info="")
            else:
                self._line(f"{label}: {total} {unit}" if total is not None else f"{label}")

    def __call__(self, row: dict) -> None:
        """One row of the current phase (a phase "iter" of unknown length is started if none is). A row
        with ``iter_time_s`` (the iteration's own duration) ends an open set-up step that much earlier."""
        with self._lock:
            dt = row.get("iter_time_s")
            try:
                dt = float(dt) if dt is not None else None
            except (TypeError, ValueError):
                dt = None
            self._end_status(True, before=dt or 0.0)
            if self._phase is None:
                self.start("iterations", None)
            ph = self._phase
            now = self._clock()
            try:
                i = int(row.get(ph.key, row.get("iteration", ph.i + 1)))
            except (TypeError, ValueError):
                i = ph.i + 1
            if ph.first_i is None:
                ph.first_i, ph.first_t = i, now
                ph.first_dt = dt if dt is not None and dt > 0 and math.isfinite(dt) else None
            ph.i, ph.t_last = i, now
            if self.terminal:
                self._bar.update(self._task, completed=i, info=_fields_text(row, short=self._narrow))
                return
            if self._due(ph, i, now):
                self._print_row(ph, row, now)
            else:
                ph.pending = dict(row)

    def close(self) -> None:
        """End the current step and phase (the last row is printed if it was not) and stop the bar."""
        with self._lock:
            if self._closed:
                return
            self._end_status(True)
            self._end_phase()
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        with self._lock:
            if exc_type is not None and self._status is not None:
                self._end_status(False)
        self.close()
        return False

    # -- plain lines -----------------------------------------------------------------------------------
    def _due(self, ph: _Phase, i: int, now: float) -> bool:
        if ph.last_line_i is None or (ph.total is not None and i >= ph.total):
            return True
        if self.every > 0 and i % self.every == 0:
            return True
        return self.interval_s > 0 and now - ph.last_line_t >= self.interval_s

    def _print_row(self, ph: _Phase, row: dict, now: float) -> None:
        width = len(str(ph.total)) if ph.total is not None else 1
        count = f"{ph.i:>{width}}/{ph.total}" if ph.total is not None else f"{ph.i}"
        fields = _fields_text(row)
        text = f"{ph.tag} {count}" + (f"  {fields}" if fields else "")
        self._line(f"{text}  elapsed {format_duration(now - self.t0)}  ETA {format_duration(ph.eta())}")
        ph.last_line_i, ph.last_line_t, ph.pending = ph.i, now, None

    def _line(self, text: str) -> None:
        f = self._file if self._file is not None else sys.stdout
        f.write(text.replace("\r", " ") + "\n")
        f.flush()

    # -- shared ----------------------------------------------------------------------------------------
    def _end_status(self, ok: bool, before: float = 0.0) -> None:
        """End the open step (``before``: it ended that many seconds ago, e.g. when iteration 1 began)."""
        if self._status is None:
            return
        text, t, task = self._status
        self._status = None
        dt = self._clock() - t
        if 0 < before < dt:
            dt -= before
        msg = f"{text}: {'done in' if ok else 'failed after'} {dt:.1f} s"
        if self.terminal:
            self._bar.remove_task(task)
            self._bar.console.print(msg, markup=False, highlight=False)
        else:
            self._line(msg)

    def _end_phase(self) -> None:
        ph = self._phase
        if ph is None:
            return
        if self.terminal and self._task is not None:
            self._bar.update(self._task, frozen=f"elapsed {format_duration(ph.t_last - self.t0)}")
        if not self.terminal and ph.pending is not None:
            self._print_row(ph, ph.pending, ph.t_last)
        self._phase = None
        self._task = None

    @property
    def _narrow(self) -> bool:
        """A terminal narrower than :data:`WIDE_TERMINAL` columns: short field names, a shorter bar."""
        return self._width() < WIDE_TERMINAL

    def _width(self) -> int:
        if self._console is not None:
            return int(self._console.width)
        from rich.console import Console

        return int(Console().width)

    def _ensure_bar(self):
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TextColumn
            from rich.table import Column

            width = self._width()
            narrow = width < WIDE_TERMINAL
            # every column on one line: long labels are cut with an ellipsis instead of wrapping the bar
            label = TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                          max_width=max(8, width // 4)))
            bar = BarColumn(bar_width=max(5, min(30, width - 75)) if narrow else 30)
            self._bar = Progress(label, bar, *_columns(self, narrow), console=self._console, transient=False)
            self._bar.start()
        return self._bar


def _columns(reporter, narrow: bool = False) -> list:
    """The bar's columns after the label and the bar: i/N, the row's fields, elapsed and ETA (defined here
    so that ``rich`` is imported only for a terminal); ``narrow``: ``0:00:41 < 0:21:08`` for the clock."""
    from rich.progress import ProgressColumn
    from rich.table import Column
    from rich.text import Text

    def one_line():
        return Column(no_wrap=True, overflow="ellipsis")

    class CountColumn(ProgressColumn):
        def render(self, task):
            if task.total is None:
                return Text("")
            width = len(str(int(task.total)))
            return Text(f"{int(task.completed):>{width}}/{int(task.total)}")

    class InfoColumn(ProgressColumn):
        def render(self, task):
            return Text(task.fields.get("info", ""))

    class ClockColumn(ProgressColumn):
        def render(self, task):
            now = reporter._clock()
            if "frozen" in task.fields:
                return Text(task.fields["frozen"])
            if task.fields.get("kind") == "status":
                return Text(format_duration(now - task.fields.get("start_t", now)))
            ph = reporter._phase
            if ph is not None and task.id == reporter._task:
                eta = ph.eta(now)
            else:
                eta = 0.0 if task.finished else None
            if narrow:
                return Text(f"{format_duration(now - reporter.t0)} ETA {format_duration(eta)}")
            return Text(f"elapsed {format_duration(now - reporter.t0)}  ETA {format_duration(eta)}")

    return [CountColumn(table_column=one_line()), InfoColumn(table_column=one_line()),
            ClockColumn(table_column=one_line())]
