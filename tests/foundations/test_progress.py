"""Progress of long work (hpc_pt.progress): plain lines in a log, a rich bar on a terminal, the line interval,
set-up status lines, the 2-step method's two stages, and the commands that report (reconstruct, ptycho2d,
simulate), on the serial, Dask (event forwarding) and MPI (rank 0 only) paths."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from hpc_pt.errors import InputError
from hpc_pt.progress import (ProgressReporter, StageTracker, describe_frames, format_bytes, format_duration,
                             parse_every, step)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(size=24, angles=3, probe_size=12, probe_fwhm=5.0, step=6.0)
CLOCK = r"\d+:\d\d:\d\d"
ROW = re.compile(rf"^(?P<tag>[a-z ]*iter) +(?P<i>\d+)/(?P<n>\d+)  objective \S+  R-factor \S+.*"
                 rf"  elapsed {CLOCK}  ETA {CLOCK}$")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    from hpc_pt.io import write_cxi
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    path = tmp_path_factory.mktemp("progress") / "small.h5"
    write_cxi(simulate_dataset(SimulationConfig(**SMALL)), path)
    return path


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _plain(clock, **kw):
    buf = io.StringIO()
    return buf, ProgressReporter(buf, terminal=False, clock=clock, **kw)


def _printed(buf) -> list[int]:
    """Iteration numbers of the row lines in ``buf``."""
    return [int(m.group("i")) for m in map(ROW.match, buf.getvalue().splitlines()) if m]


def _rows(rep, clock, n, dt, setup=0.0):
    clock.t += setup
    for i in range(1, n + 1):
        clock.t += dt
        rep({"iteration": i, "objective": 100.0 / i, "r_factor": 0.5 / i})


# --------------------------------------------------------------------------------------------------
# (c) the interval logic, with a fake clock
# --------------------------------------------------------------------------------------------------

def test_fast_iterations_one_line_every_interval():
    clock = FakeClock()
    buf, rep = _plain(clock, interval_s=10.0)
    rep.start("apt", 25)
    _rows(rep, clock, 25, 1.0)
    rep.close()
    assert _printed(buf) == [1, 11, 21, 25], buf.getvalue()  # first, every 10 s, last


def test_slow_iterations_one_line_each():
    clock = FakeClock()
    buf, rep = _plain(clock, interval_s=10.0)
    rep.start("gd", 4)
    _rows(rep, clock, 4, 12.0)
    rep.close()
    assert _printed(buf) == [1, 2, 3, 4]


def test_every_k_iterations():
    clock = FakeClock()
    buf, rep = _plain(clock, every=5, interval_s=0)
    rep.start("admm", 12)
    _rows(rep, clock, 12, 100.0)  # slow, but the interval is off: only every 5th, the first and the last
    rep.close()
    assert _printed(buf) == [1, 5, 10, 12]


def test_phase_ending_early_prints_its_last_row():
    clock = FakeClock()
    buf, rep = _plain(clock, interval_s=10.0)
    rep.start("tomography", 30, tag="tomography iter")
    _rows(rep, clock, 7, 0.1)  # CG converged at 7 of at most 30
    rep.close()
    assert _printed(buf) == [1, 7]


def test_elapsed_and_eta_from_the_clock():
    """Elapsed counts from the reporter's creation; the ETA is the mean time per iteration from the second
    row on (the 5 s set-up before row 1 does not count) times the iterations left."""
    clock = FakeClock()
    buf, rep = _plain(clock, every=1, interval_s=0)
    rep.start("apt", 10)
    _rows(rep, clock, 3, 2.0, setup=5.0)
    lines = buf.getvalue().splitlines()
    assert lines[-1].endswith("elapsed 0:00:11  ETA 0:00:14"), lines  # 5 + 3 x 2 s; 7 left x 2 s


def test_first_row_ends_the_solver_setup_without_its_own_time():
    """A solver's set-up step is ended by its first row; the row's ``iter_time_s`` is not set-up time, and
    it is the first ETA's time per iteration."""
    clock = FakeClock()
    buf, rep = _plain(clock, every=1)
    rep.start("gd", 5)
    rep.status("setting up gd (initial volume, step sizes)")
    clock.t += 45.0  # 42 s of power iterations, then a 3 s iteration 1
    rep({"iteration": 1, "objective": 1.0, "r_factor": 0.5, "iter_time_s": 3.0})
    lines = buf.getvalue().splitlines()
    assert lines[-2] == "setting up gd (initial volume, step sizes): done in 42.0 s"
    assert lines[-1].endswith("elapsed 0:00:45  ETA 0:00:12"), lines  # 4 left x 3 s


def test_parse_every():
    assert parse_every(None) == (0, 10.0)
    assert parse_every("5") == (5, 0.0)
    assert parse_every("30s") == (0, 30.0)
    assert parse_every("2.5s") == (0, 2.5)
    for bad in ("0", "-3", "x", "-1s", "0s", "5m"):
        with pytest.raises(InputError, match="--progress-every"):
            parse_every(bad)


def test_formatting_helpers():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(None) == format_duration(float("nan")) == "-:--:--"
    assert format_bytes(512) == "512 B" and format_bytes(66_967_000) == "67 MB" and format_bytes(1.25e9) == "1.2 GB"
    assert describe_frames(4218, (63, 63), 4) == "4,218 frames of 63x63 (67 MB)"
    assert describe_frames(1054, (63, 63), 4, of=4218) == "1,054 of 4,218 frames of 63x63 (17 MB)"


def test_status_steps_report_their_time_and_failure():
    clock = FakeClock()
    buf, rep = _plain(clock)
    with step(rep, "reading 4,218 frames of 63x63 (67 MB)"):
        clock.t += 12.34
    with pytest.raises(RuntimeError):
        with step(rep, "building the forward model"):
            clock.t += 1.0
            raise RuntimeError("boom")
    assert buf.getvalue().splitlines() == ["reading 4,218 frames of 63x63 (67 MB)...",
                                           "reading 4,218 frames of 63x63 (67 MB): done in 12.3 s",
                                           "building the forward model...",
                                           "building the forward model: failed after 1.0 s"]


def test_plain_callables_still_work_as_progress():
    """Hooks without status / start (a list's append) get the rows and nothing else."""
    rows = []
    with step(rows.append, "reading"):
        pass
    tracker = StageTracker(rows.append, [{"stage": None, "label": "apt", "total": 2}])
    tracker.begin()
    tracker.row({"iteration": 1})
    assert rows == [{"iteration": 1}]


# --------------------------------------------------------------------------------------------------
# (b) the terminal: one rich bar
# --------------------------------------------------------------------------------------------------

def test_terminal_renders_a_rich_bar():
    from rich.console import Console

    out = io.StringIO()
    rep = ProgressReporter(console=Console(file=out, force_terminal=True, width=160, color_system="standard"))
    assert rep.terminal
    with rep:
        with step(rep, "reading 27 frames of 12x12 (16 kB)"):
            pass
        rep.start("apt", 5)
        for i in range(1, 6):
            rep({"iteration": i, "objective": 10.0 / i, "r_factor": 0.25 / i})
    text = out.getvalue()
    assert "\x1b[" in text and "\u2501" in text, "ANSI codes and rich's bar glyphs"
    assert "reading 27 frames of 12x12 (16 kB): done in" in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert re.search(rf"apt .*5/5 objective 2  R-factor 0.05 elapsed {CLOCK}", plain), plain[-400:]
    assert "ETA" in plain


def test_terminal_bar_of_a_reconstruction(small_file):
    """The pipeline drives the bar: status steps, then apt's phase to i = N."""
    from rich.console import Console

    from hpc_pt import reconstruct

    out = io.StringIO()
    with ProgressReporter(console=Console(file=out, force_terminal=True, width=160)) as rep:
        reconstruct(str(small_file), method="apt", iterations=3, progress=rep)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "reading 27 frames of 12x12" in plain and "building the forward model" in plain
    assert re.search(r"apt .*3/3 objective \S+  R-factor", plain), plain[-600:]


def test_not_a_terminal_means_plain_lines():
    out = io.StringIO()  # no isatty: plain
    rep = ProgressReporter(out)
    assert not rep.terminal
    rep.start("apt", 1)
    rep({"iteration": 1, "objective": 1.0, "r_factor": 0.5})
    rep.close()
    assert "\x1b" not in out.getvalue() and ROW.match(out.getvalue().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# (a), (d) the CLI into a log file: plain lines, set-up status before iteration 1
# --------------------------------------------------------------------------------------------------

def _cli_to_file(tmp_path, *args, name="log.txt", timeout=300):
    log = tmp_path / name
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        p = subprocess.run([sys.executable, "-m", "hpc_pt", *args], cwd=tmp_path, env=env, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=timeout, check=False)
    return p.returncode, log.read_text()


@pytest.fixture(scope="module")
def apt_log(small_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apt-log")
    code, text = _cli_to_file(tmp, "reconstruct", str(small_file), "--method", "apt", "--iterations", "4",
                              "--progress-every", "1", "--out", str(tmp / "r.zarr"))
    assert code == 0, text
    return text


def test_log_file_has_plain_progress_lines(apt_log):
    assert "\r" not in apt_log and "\x1b" not in apt_log
    rows = [m for m in map(ROW.match, apt_log.splitlines()) if m]
    assert [int(m.group("i")) for m in rows] == [1, 2, 3, 4] and {m.group("n") for m in rows} == {"4"}
    assert "apt: 4 iterations" in apt_log


def test_setup_status_lines_come_before_iteration_1(apt_log):
    lines = apt_log.splitlines()
    first_row = next(k for k, line in enumerate(lines) if ROW.match(line))
    before = "\n".join(lines[:first_row])
    assert "reading 27 frames of 12x12 (16 kB)..." in before
    assert re.search(r"reading 27 frames of 12x12 \(16 kB\): done in \d+\.\d s", before)
    assert re.search(r"building the forward model \(linear, 3 angles, volume 24x24x24\): done in \d+\.\d s",
                     before)
    assert re.search(r"setting up apt \(initial volume, step sizes\): done in \d+\.\d s", before)
    writing = next(k for k, line in enumerate(lines) if line.startswith("writing "))
    assert writing > first_row and lines[-1].startswith("wrote ") and "final R-factor" in lines[-1]


def test_default_log_interval_and_quiet(small_file, tmp_path, capsys):
    """Default (every 10 s): a fast run logs its first and last iteration; --quiet logs no progress at all."""
    from hpc_pt.cli import main

    assert main(["reconstruct", str(small_file), "--method", "gd", "--iterations", "3",
                 "--out", str(tmp_path / "a.zarr")]) == 0
    out = capsys.readouterr().out
    assert [int(m.group("i")) for m in map(ROW.match, out.splitlines()) if m] == [1, 3], out
    assert main(["reconstruct", str(small_file), "--method", "gd", "--iterations", "3", "--quiet",
                 "--out", str(tmp_path / "b.zarr")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("wrote "), out


def test_bad_progress_every_is_a_one_line_error(small_file, tmp_path, capsys):
    from hpc_pt.cli import main

    assert main(["reconstruct", str(small_file), "--iterations", "1", "--progress-every", "often",
                 "--out", str(tmp_path / "r.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --progress-every 'often'") and "30s" in err[0]
    assert not (tmp_path / "r.zarr").exists()


# --------------------------------------------------------------------------------------------------
# (e) the 2-step method's two stages
# --------------------------------------------------------------------------------------------------

def test_twostep_stages_in_log_history_and_summary(small_file, tmp_path, capsys):
    import zarr

    from hpc_pt.cli import main
    from hpc_pt.io.zarr_store import read_table

    store = tmp_path / "t.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # low overlap on this tiny scan
        assert main(["reconstruct", str(small_file), "--method", "two-step", "--iterations", "3",
                     "--option", "tomo_iterations=4", "--option", "tomo_tol=0", "--progress-every", "1",
                     "--out", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head1 = lines.index("stage 1/2, ptychography (dm): 3 iterations")
    head2 = lines.index("stage 2/2, tomography (cg): 4 iterations")
    rows = [(k, ROW.match(line)) for k, line in enumerate(lines)]
    stage1 = [(k, int(m.group("i"))) for k, m in rows if m and m.group("tag") == "ptychography iter"]
    assert [i for _, i in stage1] == [1, 2, 3] and all(head1 < k < head2 for k, _ in stage1)
    tomo = [(k, line) for k, line in enumerate(lines) if line.startswith("tomography iter ")]
    assert [int(re.match(r"tomography iter (\d+)/4", t).group(1)) for _, t in tomo] == [1, 2, 3, 4]
    assert all(k > head2 for k, _ in tomo) and all("residual" in t and "ETA" in t for _, t in tomo)

    hist = read_table(store)
    assert list(hist["stage"]) == [1, 1, 1, 2, 2, 2, 2]
    assert list(hist["iteration"]) == list(range(1, 8))
    assert list(hist["tomo_iteration"][3:]) == [1, 2, 3, 4] and np.all(np.isnan(hist["tomo_iteration"][:3]))
    assert np.all(np.isfinite(hist["r_factor"][:3])) and np.all(np.isnan(hist["r_factor"][3:]))
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["history_stages"] == {"1": "ptychography (dm)", "2": "tomography (cg)"}

    final = lines[-1]
    m = re.search(r"final R-factor (\S+) \(volume; 2D ptychography stage (\S+)\)", final)
    assert m, final
    volume_rf, stage_rf = float(m.group(1)), float(m.group(2))
    assert volume_rf == pytest.approx(attrs["solver_state"]["r_factor"], rel=1e-3)
    assert stage_rf == pytest.approx(hist["r_factor"][2], rel=1e-3)  # the last 2D row
    assert (tmp_path / "t.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# (f) ptycho2d and simulate
# --------------------------------------------------------------------------------------------------

def test_ptycho2d_shows_progress(small_file, capsys):
    from hpc_pt.cli import main

    assert main(["ptycho2d", str(small_file), "--angle", "1", "--method", "dm", "--iterations", "3",
                 "--progress-every", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "reading 27 frames of 12x12 (16 kB)..."
    assert lines.index("dm, angle 1: 3 iterations") < [k for k, l in enumerate(lines) if ROW.match(l)][0]
    assert [int(m.group("i")) for m in map(ROW.match, lines) if m] == [1, 2, 3]
    assert lines[-1].startswith("angle 1 (") and "final R-factor" in lines[-1]
    assert main(["ptycho2d", str(small_file), "--iterations", "2", "--quiet"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_simulate_shows_progress(tmp_path, capsys):
    from hpc_pt.cli import main

    assert main(["simulate", "--size", "16", "--angles", "4", "--probe-size", "8", "--probe-fwhm", "3",
                 "--step", "4", "--out", str(tmp_path / "s.h5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "simulating: 4 angles"
    assert re.match(rf"^angles 4/4  elapsed {CLOCK}  ETA {CLOCK}$", lines[1]), lines
    assert any(re.match(r"writing .*s\.h5: done in \d+\.\d s", l) for l in lines) and lines[-1].startswith("wrote ")


# --------------------------------------------------------------------------------------------------
# Dask (events to the client) and MPI (rank 0 only)
# --------------------------------------------------------------------------------------------------

def test_dask_events_replay_the_same_report():
    """What rank 0 sends through Dask events (rows, status steps, phases) makes the client's reporter print
    what a direct run prints."""
    from hpc_pt.parallel.dask import _ForwardProgress, _replay_progress

    class Worker:
        def __init__(self):
            self.events = []

        def log_event(self, topic, msg):
            self.events.append((topic, msg))

    def drive(progress):
        with step(progress, "reading 27 frames of 12x12 (16 kB)"):
            pass
        tracker = StageTracker(progress, [{"stage": 1, "label": "stage 1/2, a", "total": 2, "tag": "a iter"},
                                          {"stage": 2, "label": "stage 2/2, b", "total": 1, "tag": "b iter",
                                           "key": "k"}])
        tracker.begin(1)
        for row in ({"stage": 1, "iteration": 1, "objective": np.float64(2.0), "r_factor": 0.5},
                    {"stage": 1, "iteration": 2, "objective": 1.0, "r_factor": 0.25},
                    {"stage": 2, "iteration": 3, "k": 1, "objective": 0.5, "r_factor": 0.125}):
            tracker.row(row)

    clock = FakeClock()
    direct, rep = _plain(clock, every=1)
    drive(rep)
    rep.close()
    worker = Worker()
    fwd = _ForwardProgress(worker, "topic")
    drive(fwd)
    assert fwd.events == len(worker.events) and {t for t, _ in worker.events} == {"topic"}
    replayed, rep2 = _plain(FakeClock(), every=1)
    for _t, msg in worker.events:
        _replay_progress(rep2, msg)
    rep2.close()
    assert replayed.getvalue() == direct.getvalue()
    assert "b iter 1/1" in direct.getvalue()
    rows = []
    for _t, msg in worker.events:  # a plain hook gets the rows only
        _replay_progress(rows.append, msg)
    assert [r["iteration"] for r in rows] == [1, 2, 3]


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def test_mpi_progress_from_rank0_only(small_file, tmp_path):
    assert _mpiexec(), "mpiexec not found: install the test extra (pip install -e '.[test]', which brings mpich)"
    log = tmp_path / "mpi.txt"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        p = subprocess.run(["timeout", "240", _mpiexec(), "-n", "2", sys.executable, "-m", "hpc_pt", "reconstruct",
                            str(small_file), "--backend", "mpi", "--method", "gd", "--iterations", "3",
                            "--progress-every", "1", "--out", str(tmp_path / "r.zarr")],
                           env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=300, check=False)
    text = log.read_text()
    assert p.returncode == 0, text[-3000:]
    assert [int(m.group("i")) for m in map(ROW.match, text.splitlines()) if m] == [1, 2, 3], text
    assert text.count("gd: 3 iterations") == 1 and "\x1b" not in text and "\r" not in text
    assert re.search(r"reading \d+ of 27 frames of 12x12 \(\d+ kB\) on rank 0 of 2: done in", text), text


def test_terminal_bar_fits_an_80_column_terminal():
    """On a standard 80-column terminal the bar stays on one line: short field names and clock, a shorter
    bar, long stage labels cut with an ellipsis (measured before: wrapped over 3-7 lines)."""
    from rich.console import Console

    out = io.StringIO()
    rep = ProgressReporter(console=Console(file=out, force_terminal=True, width=80, color_system="standard"))
    with rep:
        rep.start("stage 1/2, ptychography (dm) of a long-named dataset", 200)
        for i in range(1, 201, 40):
            rep({"iteration": i, "objective": 12345.678 / i, "r_factor": 0.2345 / i})
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [ln for ln in re.split(r"[\r\n]", plain) if ln.strip()]
    assert lines and all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    bar_lines = [ln for ln in lines if "/200" in ln]
    assert any("obj " in ln and " R " in ln for ln in bar_lines), bar_lines
    assert all(ln.count("/200") == 1 for ln in bar_lines), "one bar per line, never wrapped"
