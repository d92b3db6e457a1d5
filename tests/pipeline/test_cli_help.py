"""The CLI explains itself: every option's help shows its real default and its choices; a usage error is one
line naming the fix (exit 2); the simulator's defaults work at every size; a one-process command started
under ``mpiexec -n 2`` says to add ``--backend mpi``; an MPI job's error is one line without MPI's banners."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from hpc_pt.cli import _one_report, build_parser, main
from hpc_pt.cli_parser import ArgumentParser, add_model_flags, explain_defaults, show_value, subparsers
from hpc_pt.errors import InputError
from hpc_pt.parallel.launch import launch_world
from hpc_pt.pipeline import ReconConfig
from hpc_pt.simulate import SimulationConfig
from hpc_pt.simulate.config import scaled_defaults

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK",
               "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_ID", "SLURM_NTASKS",
               "SLURM_PROCID")


def _expanded_help(parser, action) -> str:
    return parser._get_formatter()._expand_help(action)


def _value_options(parser):
    return [a for a in parser._actions if a.option_strings and a.nargs != 0
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


# ---------------------------------------------------------------------------------------------- --help
def test_every_option_shows_its_default_and_choices(monkeypatch):
    """Walks every subcommand (also ones added later): each option that takes a value says its default
    (or that it is required); each option with choices lists them in its --help."""
    monkeypatch.setenv("COLUMNS", "200")
    subs = subparsers(build_parser())
    assert {"simulate", "info", "validate", "reconstruct", "ptycho2d", "demo", "evaluate"} <= set(subs)
    missing = []
    for name, sub in subs.items():
        text = sub.format_help()
        for action in _value_options(sub):
            flag = action.option_strings[-1]
            shown = _expanded_help(sub, action).lower()
            if "default" not in shown and "required" not in shown:
                missing.append(f"hpc-pt {name} {flag}: {shown!r}")
            if action.choices:  # argparse's {a,b} or, where a choice has a comma, our {a | b}
                listed = ["{" + sep.join(str(c) for c in action.choices) + "}" for sep in (",", " | ")]
                assert any(f"{flag} {ls}" in text for ls in listed), (name, flag, listed)
    assert not missing, "options whose --help shows no default:\n" + "\n".join(missing)


def test_help_shows_the_settings_models_real_defaults():
    """Flags that default to None (so they override a config file only when given) show the field default
    of SimulationConfig / ReconConfig, and Literal fields give their choices."""
    subs = subparsers(build_parser())
    sim = {a.dest: a for a in subs["simulate"]._actions}
    assert set(SimulationConfig.model_fields) <= set(sim), "every simulation setting has a flag"
    for name, field in SimulationConfig.model_fields.items():
        action = sim[name]
        assert action.default is None and action.option_strings == ["--" + name.replace("_", "-")]
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal \
            else None
        assert (tuple(action.choices) if action.choices else None) == choices, name
        text = _expanded_help(subs["simulate"], action)
        if field.default is not None and "default" not in (field.description or ""):
            assert f"(default: {show_value(field.default)})" in text, (name, text)
        else:
            assert "default" in text, (name, text)
    rec = {a.dest: a for a in subs["reconstruct"]._actions}
    for name, field in ReconConfig.model_fields.items():
        action = rec.get(name)
        if action is None or action.nargs == 0:
            continue  # e.g. options (--option KEY=VALUE), probe_refine (a switch)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal \
            else None
        if choices:
            assert tuple(action.choices) == choices, name
        if field.default is not None and action.default is None:
            assert f"(default: {show_value(field.default)})" in _expanded_help(subs["reconstruct"], action), name
    text = subs["reconstruct"].format_help()
    assert f"(default: {ReconConfig.model_fields['iterations'].default})" in " ".join(text.split())
    assert "{apt,apts,admm,gd,two-step}" in text
    weights = " ".join(_expanded_help(subs["reconstruct"], rec["prior_weight"]).split())
    from hpc_pt.solvers.admm import ADMMOptions
    from hpc_pt.solvers.apt import APTOptions

    assert f"apt {show_value(APTOptions().tv_rel)}" in weights and f"admm {show_value(ADMMOptions().prior_weight)}" \
        in weights


def test_a_new_settings_field_gets_its_flag_default_and_choices():
    """The mechanism behind the CLI's help: a field added to a settings model needs no help edit."""
    class Settings(BaseModel):
        colour: typing.Literal["red", "blue"] = "blue"
        count: int = Field(7, description="how many")
        scale: float | None = Field(None, description="scale (default: from the data)")

    parser = ArgumentParser(prog="tool")
    parser.add_argument("--out", required=True, help="where")
    add_model_flags(parser, Settings)
    explain_defaults(parser, Settings)
    helps = {a.dest: _expanded_help(parser, a) for a in parser._actions}
    assert helps["colour"].endswith("(default: blue)") and helps["count"] == "how many (default: 7)"
    assert helps["scale"] == "scale (default: from the data)" and helps["out"] == "where (required)"
    ns = parser.parse_args(["--out", "x", "--colour", "red", "--count", "3"])
    assert (ns.colour, ns.count, ns.scale) == ("red", 3, None)


# ---------------------------------------------------------------------------------------- usage errors
USAGE_ERRORS = [
    (["reconstruct", "d.h5", "--out", "r.zarr", "--method", "nope"], "invalid choice: 'nope'", "reconstruct"),
    (["reconstruct", "d.h5", "--out", "r.zarr", "--iterations", "abc"], "invalid int value: 'abc'", "reconstruct"),
    (["reconstruct", "d.h5"], "required: --out", "reconstruct"),
    (["reconstruct", "d.h5", "--out", "r.zarr", "--iteratoins", "3"], "did you mean --iterations?", "reconstruct"),
    (["simulate", "--out", "d.h5", "--phantom", "cube"], "invalid choice: 'cube'", "simulate"),
    (["evaluate", "r.zarr"], "required: --truth", "evaluate"),
    (["frobnicate"], "invalid choice: 'frobnicate'", None),
    ([], "required: command", None),
]


@pytest.mark.parametrize("argv,what,sub", USAGE_ERRORS)
def test_usage_error_is_one_line(capsys, tmp_path, monkeypatch, argv, what, sub):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    hint = f"see `hpc-pt {sub} --help`" if sub else "see `hpc-pt --help`"
    assert what in lines[0] and lines[0].endswith(hint), lines[0]
    assert "usage:" not in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_usage_error_from_a_real_process_and_help_still_shows_usage():
    r = subprocess.run([sys.executable, "-m", "hpc_pt", "reconstruct", "d.h5", "--out", "r.zarr", "--iterations",
                        "abc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: argument --iterations: invalid int value")
    assert "usage:" not in r.stderr and "Traceback" not in r.stderr
    h = subprocess.run([sys.executable, "-m", "hpc_pt", "reconstruct", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert h.returncode == 0 and h.stdout.startswith("usage: hpc-pt reconstruct") and h.stderr == ""


# ------------------------------------------------------------------------------- size-scaled defaults
@pytest.mark.parametrize("size", list(range(16, 161, 9)) + [17, 31, 64, 127, 128, 160])
def test_default_geometry_works_at_every_size(size):
    scaled = []
    cfg = SimulationConfig.build({"size": size}, scaled=scaled)
    assert scaled == ["probe_size", "probe_fwhm", "step", "field_pad", "per_angle_offset"]
    assert 2 <= cfg.probe_size <= cfg.field_size and cfg.probe_size == size // 2
    assert abs(cfg.probe_fwhm - size / 8) <= 0.0051 and abs(cfg.step - size / 8) <= 0.0051
    assert cfg.field_pad == size // 6 and cfg.per_angle_offset == 1
    assert SimulationConfig(size=size) == cfg  # the Python API scales the same way


def test_default_is_the_sparse_joint_scan_and_seed001_is_its_example():
    assert scaled_defaults(48) == {"probe_size": 24, "probe_fwhm": 6.0, "step": 6.0, "field_pad": 8,
                                   "per_angle_offset": 1.0}
    d = SimulationConfig()  # size 128 by default: the same rule
    assert (d.size, d.probe_size, d.probe_fwhm, d.step, d.field_pad) == (128, 64, 16.0, 16.0, 21)
    seed001 = tomllib.loads((ROOT / "examples" / "simulate_seed001.toml").read_text())["simulate"]
    cfg = SimulationConfig.from_mapping(seed001)
    assert (cfg.probe_size, cfg.probe_fwhm, cfg.step, cfg.field_pad, cfg.per_angle_offset) == (64, 14.0, 32.0, 0, 0)
    given = SimulationConfig(size=48, step=6.0)  # what is given stays as given; no free space is added
    assert (given.probe_size, given.step, given.field_pad, given.per_angle_offset) == (24, 6.0, 0, 0)


def test_scaled_settings_from_a_config_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("size: 48\nstep: 6\n")
    scaled = []
    cfg = SimulationConfig.from_file(path, {"angles": 2}, scaled=scaled)
    assert scaled == ["probe_size", "probe_fwhm"] and (cfg.probe_size, cfg.step, cfg.angles) == (24, 6.0, 2)


def test_default_scan_reconstructs_well():
    """The defaults give a dataset the joint solver reconstructs (the old seed-001-scaled defaults, step N / 4
    without free space, gave 3.6 dB at 48^3 / 24 angles; the new ones 21 dB there). Small case: 24^3."""
    import warnings

    from hpc_pt.metrics import evaluate
    from hpc_pt.pipeline import reconstruct
    from hpc_pt.simulate import simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=24, angles=12))
    old = simulate_dataset(SimulationConfig(size=24, angles=12, probe_size=12, probe_fwhm=2.62, step=6.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new_db = evaluate(reconstruct(ds, iterations=40).volume, ds.truth["volume"])["snr_db"]
        old_db = evaluate(reconstruct(old, iterations=40).volume, old.truth["volume"])["snr_db"]
    assert new_db > 12 and new_db > old_db + 5, (new_db, old_db)


def test_impossible_probe_says_what_to_change(capsys, tmp_path):
    with pytest.raises(InputError, match=r"use --probe-size <= 32 or --field-pad >= 16"):
        SimulationConfig.build({"size": 32, "probe_size": 64}, names="flags")
    with pytest.raises(InputError, match=r"use probe_size <= 40 or field_pad >= 12"):
        SimulationConfig.build({"size": 40, "probe_size": 64})
    out = tmp_path / "d.h5"
    assert main(["simulate", "--size", "32", "--probe-size", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--probe-size <= 32 or --field-pad >= 16" in err[0]
    assert not out.exists()


def test_simulate_with_defaults_at_size_16(capsys, tmp_path):
    out = tmp_path / "d16.h5"
    assert main(["simulate", "--size", "16", "--angles", "2", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    notes = [ln for ln in text.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "probe_size 8, probe_fwhm 2, step 2, field_pad 2, per_angle_offset 1" in notes[0], text
    assert main(["info", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_angles"] == 2 and d["detector_shape"] == [8, 8] and d["frames_total"] > 0


# -------------------------------------------------------------------------------- launcher detection
@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, (1, 2)),  # MPICH / Intel MPI (Hydra)
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, (0, 4)),  # Open MPI
    ({"MV2_COMM_WORLD_RANK": "2", "MV2_COMM_WORLD_SIZE": "3"}, (2, 3)),  # MVAPICH2
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, (0, 1)),  # mpiexec -n 1
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, (1, 2)),  # srun -n 2
    ({"SLURM_STEP_ID": "0", "SLURM_NTASKS": "3", "SLURM_PROCID": "2"}, (2, 3)),  # a step without STEP_NUM_TASKS
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}, None),  # sbatch script, outside srun
    ({"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, (0, 1)),  # srun --ntasks=1
    ({"PMIX_RANK": "1"}, (1, 2)),  # PMIx without a size: rank 1 proves a world of two or more
    ({"PMIX_RANK": "0"}, None),
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "2"}, (0, 2)),  # srun --mpi=pmix
    ({"PMI_RANK": "x", "PMI_SIZE": "2"}, (0, 2)),
])
def test_launch_world(env, expected):
    assert launch_world(env) == expected


@pytest.fixture(scope="module")
def small_cxi(tmp_path_factory):
    from hpc_pt.io import write_cxi
    from hpc_pt.simulate import simulate_dataset

    path = tmp_path_factory.mktemp("launch") / "d.cxi"
    write_cxi(simulate_dataset(SimulationConfig(size=16, angles=2, probe_size=8, probe_fwhm=3, step=3,
                                                field_pad=3)), path)
    return path


def _fake_launch(monkeypatch, **env):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_serial_backend_under_a_two_process_launch_refuses(capsys, tmp_path, monkeypatch, small_cxi, rank):
    _fake_launch(monkeypatch, PMI_RANK=rank, PMI_SIZE="2")
    out = tmp_path / "r.zarr"
    assert main(["reconstruct", str(small_cxi), "--out", str(out), "--iterations", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if rank == "0":
        assert len(err) == 1 and err[0].startswith("error: launched as 2 processes") and "add --backend mpi" in err[0]
    else:
        assert err == []  # only rank 0 speaks
    assert main(["simulate", "--size", "16", "--out", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (len(err) == 1 and "start it as one process" in err[0]) if rank == "0" else err == []
    assert main(["reconstruct", str(small_cxi), "--out", str(out), "--iterations", "abc"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == (1 if rank == "0" else 0)
    assert not out.exists() and not (tmp_path / "s.h5").exists()


def test_one_rank_launch_and_sbatch_script_run_normally(capsys, tmp_path, monkeypatch, small_cxi):
    for env in ({"PMI_RANK": "0", "PMI_SIZE": "1"}, {"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}):
        _fake_launch(monkeypatch, **env)
        out = tmp_path / f"r{len(env)}{env.get('PMI_SIZE', '')}.zarr"
        assert main(["reconstruct", str(small_cxi), "--out", str(out), "--iterations", "1", "--quiet"]) == 0
        assert out.is_dir()
    capsys.readouterr()


def test_one_report_after_every_rank_failed():
    same = [(2, "error: x missing; fix it", False)] * 3
    assert _one_report(same) == (2, "error: x missing; fix it")
    own = [(2, "error: out exists; pass --force", False), (2, "error: another rank failed", True)]
    assert _one_report(own) == (2, "error: rank 0 of 2: out exists; pass --force")
    mixed = [(2, "error: another rank failed", True), (2, "error: a", False), (2, "error: b", False),
             (2, "error: a", False)]
    assert _one_report(mixed) == (2, "error: ranks 1, 3 of 4: a [1 other rank(s) failed with other errors]")


# ------------------------------------------------------------------------------------ real MPI jobs
def _mpiexec(*args, n=2, timeout=120):
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel installs it there
    exe = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    assert exe, "mpiexec not found: install the test extra (pip install -e '.[test]', which brings mpich)"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return subprocess.run(["timeout", str(timeout), exe, "-n", str(n), *args], capture_output=True, text=True,
                          timeout=timeout + 30, env=env)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error:" in ln]


def test_mpiexec_without_backend_mpi_says_so(tmp_path, small_cxi):
    out = tmp_path / "r.zarr"
    p = _mpiexec(sys.executable, "-m", "hpc_pt", "reconstruct", str(small_cxi), "--out", str(out),
                 "--iterations", "1", "--quiet")
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "launched as 2 processes" in lines[0] and "add --backend mpi" in lines[0], p.stderr
    assert not out.exists() and p.stdout == ""


@pytest.mark.parametrize("problem", ["missing-input", "usage-error", "output-exists-rank0-only",
                                     "solver-fails-on-rank1"])
def test_mpi_error_is_one_line_without_abort_banner(tmp_path, small_cxi, problem):
    """Every rank failing (missing input, a usage error), rank 0 alone failing before the solve (agreed on
    collectively), and rank 1 failing alone inside the solver (the job is aborted): one `error:` line, and
    neither MPICH's `Abort(...)` banner nor hydra's `BAD TERMINATION` one."""
    store = tmp_path / "r.zarr"
    src = str(tmp_path / "missing.cxi") if problem == "missing-input" else str(small_cxi)
    if problem == "output-exists-rank0-only":
        store.mkdir()
    if problem == "solver-fails-on-rank1":
        args = (sys.executable, str(ROOT / "tests" / "mpi_scripts" / "fail_one_rank.py"), src, str(store))
    else:
        args = (sys.executable, "-m", "hpc_pt", "reconstruct", src, "--backend", "mpi", "--method", "gd",
                "--iterations", "abc" if problem == "usage-error" else "2", "--out", str(store), "--quiet")
    p = _mpiexec(*args, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    errors = _error_lines(p.stderr)
    expected = {"missing-input": "missing.cxi: no such file", "usage-error": "invalid int value: 'abc'",
                "output-exists-rank0-only": "error: rank 0 of 2:",
                "solver-fails-on-rank1": "error: rank 1 of 2: injected failure"}[problem]
    assert len(errors) == 1 and expected in errors[0], p.stderr
    assert "Abort(" not in p.stderr and "BAD TERMINATION" not in p.stderr + p.stdout, p.stderr


# ------------------------------------------------------------------------------- typos and warnings
def test_abbreviated_option_is_a_typo_not_a_shortcut(capsys, tmp_path):
    """`--iteration 5` must not silently mean `--iterations 5` (argparse's abbreviations are off)."""
    for argv in (["reconstruct", str(tmp_path / "x.h5"), "--out", str(tmp_path / "x.zarr"), "--iteration", "5"],
                 ["simulate", "--siz", "16", "--out", str(tmp_path / "s.h5")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: unknown option ") and "did you mean" in err[0], err
    assert not any(tmp_path.iterdir())


def test_python_warnings_print_as_one_line(capsys, tmp_path):
    """A solver's RuntimeWarning (the 2-step on a sparse scan) is one `warning:` line, without the source
    file, line number and code that Python's default warning display adds."""
    data, out = tmp_path / "d.h5", tmp_path / "r.zarr"
    assert main(["simulate", "--size", "16", "--angles", "3", "--quiet", "--out", str(data)]) == 0
    capsys.readouterr()
    assert main(["reconstruct", str(data), "--method", "two-step", "--iterations", "3", "--quiet",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    warned = [ln for ln in err if "overlap" in ln and "2-step" in ln]
    assert warned and all(ln.startswith("warning: ") for ln in warned), err
    assert not any("Warning:" in ln or ".py:" in ln for ln in err), err
