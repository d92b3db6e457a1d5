"""The reconstruction figure, inspected as a matplotlib Figure (axes, labels, titles), not as pixels."""
import math
import warnings

import numpy as np
import pytest

from hpc_pt.metrics import snr_db
from hpc_pt.plots import SNR_MAX_VOXELS, make_figure, recon_figure, truth_snr_db


def volume(shape=(6, 10, 10), scale=(1e-6, 1e-8), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale[0] + 1j * rng.standard_normal(shape) * scale[1]).astype(np.complex64)


def apt_history(n=8):
    it = np.arange(1, n + 1, dtype=float)
    return {"iteration": it, "objective": 1e3 * 0.5 ** it, "r_factor": 0.6 / it, "primal_residual": 50 / it,
            "rel_change": 1.0 / it ** 2, "time_s": 0.1 * it, "cg_iterations": np.full(n, 4.0)}


def two_step_history(n1=4, n2=6):
    """Shaped like the 2-step history: stage 1 rows (ptychography) then stage 2 rows (tomography),
    with the other stage's quantities NaN."""
    nan1, nan2 = np.full(n1, np.nan), np.full(n2, np.nan)
    return {"stage": np.r_[np.ones(n1), 2 * np.ones(n2)], "iteration": np.arange(1.0, n1 + n2 + 1),
            "objective": np.r_[100 * 0.5 ** np.arange(n1), 10 * 0.8 ** np.arange(n2)],
            "r_factor": np.r_[0.5 / np.arange(1, n1 + 1), nan2],
            "tomo_iteration": np.r_[nan1, np.arange(1.0, n2 + 1)],
            "residual": np.r_[nan1, 0.1 ** np.arange(1, n2 + 1)]}


def image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images()]


def colorbar_axes(fig):
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def curve_axes(fig):
    return [ax for ax in fig.axes if ax.get_lines()]


def test_slices_have_physical_axes_slice_indices_and_labelled_colour_bars():
    vol = volume()
    fig = make_figure(vol, apt_history(), title="hpc-pt gd: r.zarr", voxel_size_m=20e-9, model="exp")
    imgs = image_axes(fig)
    assert len(imgs) == 6
    for ax in imgs:
        assert ax.get_xlabel().endswith("(nm)") and ax.get_ylabel().endswith("(nm)")
    titles = [ax.get_title() for ax in imgs]
    assert titles[0].startswith("z index 3") and titles[1].startswith("y index 5") and titles[2].startswith("x index 5")
    # z: 6 voxels of 20 nm, centred: extent -60..60 nm on the vertical axis of the y and x slices
    left, right, bottom, top = imgs[1].get_images()[0].get_extent()
    assert (left, right) == pytest.approx((-100, 100)) and (top, bottom) == pytest.approx((-60, 60))
    cbs = [ax.get_ylabel() for ax in colorbar_axes(fig)]
    assert len(cbs) == 2
    assert "\u03b4" in cbs[0] and "refractive-index decrement" in cbs[0] and "dimensionless" in cbs[0]
    assert "\u03b2" in cbs[1] and "absorption index" in cbs[1] and "dimensionless" in cbs[1]
    # delta ~ 1e-6 is shown in units of 10^-6 (named in the label), not as a bare offset
    assert "10\u207b\u2076" in cbs[0] and "10\u207b\u2078" in cbs[1]
    shown = imgs[0].get_images()[0].get_array()
    assert np.allclose(shown * 1e-6, vol.real[3], rtol=1e-5, atol=1e-12)


def test_linear_model_labels_and_micrometre_axes():
    fig = make_figure(volume((4, 8, 8), scale=(0.3, 0.01)), apt_history(), voxel_size_m=500e-9, model="linear")
    cbs = [ax.get_ylabel() for ax in colorbar_axes(fig)]
    assert cbs[0].startswith("Re u") and cbs[1].startswith("Im u") and all("dimensionless" in c for c in cbs)
    assert "\u00d710" not in cbs[0]  # values of order 0.3 need no power of ten
    assert all(ax.get_xlabel().endswith("(\u00b5m)") for ax in image_axes(fig))
    no_voxel = make_figure(volume((4, 8, 8)), {}, model="linear")
    assert all(ax.get_xlabel().endswith("(voxels)") for ax in image_axes(no_voxel))


def test_one_axes_per_convergence_quantity():
    fig = make_figure(volume(), apt_history(), voxel_size_m=1e-8)
    curves = curve_axes(fig)
    titles = [ax.get_title() for ax in curves]
    assert len(curves) == 4, titles  # objective, R-factor, residuals, relative change (time_s is no panel)
    assert titles[0].startswith("objective") and titles[1].startswith("R-factor")
    assert "residual" in titles[2] and "relative change" in titles[3]
    assert len({id(ax) for ax in curves}) == 4 and all(len(ax.get_lines()) == 1 for ax in curves)
    obj = curves[0]
    assert obj.get_yscale() == "log"  # falls 128x
    assert curves[-1].get_xlabel() == "iteration"
    x, y = obj.get_lines()[0].get_data()
    np.testing.assert_allclose(y, apt_history()["objective"])
    admm = dict(apt_history(), dual_residual=np.linspace(30, 3, 8))
    res_ax = [ax for ax in curve_axes(make_figure(volume(), admm)) if "residual" in ax.get_title()][0]
    assert sorted(t.get_text() for t in res_ax.get_legend().get_texts()) == ["dual", "primal"]


def test_title_has_snr_only_when_truth_is_known():
    hist = apt_history()
    with_snr = make_figure(volume(), hist, title="hpc-pt apt: r.zarr", snr_db=17.24).get_suptitle()
    assert "SNR 17.2 dB" in with_snr and with_snr.startswith("hpc-pt apt: r.zarr")
    assert "R-factor 0.075" in with_snr  # final R-factor 0.6 / 8
    assert "SNR" not in make_figure(volume(), hist, title="t").get_suptitle()


def test_staged_history_with_nans_plots_finite_points_per_stage():
    hist = two_step_history()
    fig = make_figure(volume(), hist, voxel_size_m=1e-8, model="linear",
                      stage_names={1: "ptychography (dm)", 2: "tomography (cg)"})
    curves = {ax.get_title().split()[0]: ax for ax in curve_axes(fig)}
    assert set(curves) == {"objective", "R-factor", "tomography"}
    obj = curves["objective"].get_lines()
    assert len(obj) == 2  # one line per stage
    labels = [t.get_text() for t in curves["objective"].get_legend().get_texts()]
    assert labels == ["stage 1: ptychography (dm)", "stage 2: tomography (cg)"]
    np.testing.assert_array_equal(obj[0].get_data()[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(obj[1].get_data()[0], [5, 6, 7, 8, 9, 10])
    for ax in curves.values():
        for line in ax.get_lines():
            assert np.all(np.isfinite(line.get_data()[1]))
    rf = curves["R-factor"].get_lines()
    assert len(rf) == 1 and rf[0].get_data()[1].size == 4
    # the last stage (tomography) has no R-factor: none is quoted as "final"
    assert "R-factor" not in fig.get_suptitle()
    # the caller's final R-factor (the 2-step's through the forward model) is quoted instead
    assert "final R-factor 0.0527" in make_figure(volume(), hist, r_factor=0.05274).get_suptitle()


def test_all_nan_or_empty_history_and_planes_input():
    vol = volume((6, 8, 8))
    nan_hist = {"iteration": np.arange(1.0, 4), "objective": np.full(3, np.nan), "r_factor": [0.5, np.nan, 0.2]}
    fig = make_figure(vol, nan_hist)
    assert [ax.get_title().split()[0] for ax in curve_axes(fig)] == ["R-factor"]
    empty = make_figure(vol, {})
    assert not curve_axes(empty) and any("no convergence history" in t.get_text()
                                         for ax in empty.axes for t in ax.texts)
    planes = {"xy": vol[3], "xz": vol[:, 4], "yz": vol[:, :, 4]}
    a, b = make_figure(vol, {}, voxel_size_m=1e-8), make_figure(planes, {}, voxel_size_m=1e-8)
    for ia, ib in zip(image_axes(a), image_axes(b)):
        assert ia.get_title() == ib.get_title()
        np.testing.assert_array_equal(ia.get_images()[0].get_array(), ib.get_images()[0].get_array())


def test_recon_figure_writes_a_png(tmp_path):
    out = tmp_path / "r.png"
    assert recon_figure(volume(), two_step_history(), out, title="x", voxel_size_m=1e-8, model="exp",
                        snr_db=3.0) == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truth_snr_matches_metrics_and_is_skipped_when_not_cheap():
    rng = np.random.default_rng(1)
    truth = volume((6, 8, 8))
    noisy = truth + (rng.standard_normal(truth.shape) * 1e-7).astype(np.complex64)
    assert truth_snr_db(noisy, truth) == pytest.approx(snr_db(noisy, truth), abs=1e-9)
    wide = np.zeros((6, 12, 12), np.complex64)
    wide[:, 2:10, 2:10] = noisy  # a reconstruction wider than the truth is centre-cropped (as evaluate)
    assert truth_snr_db(wide, truth) == pytest.approx(snr_db(noisy, truth), abs=1e-9)
    assert truth_snr_db(noisy, None) is None
    assert truth_snr_db(noisy[:, :4], truth) is None  # smaller than the truth
    assert truth_snr_db(noisy, truth, max_voxels=noisy.size - 1) is None
    assert SNR_MAX_VOXELS >= 128 ** 3


def spy_on_figure(monkeypatch) -> dict:
    """Record the keyword arguments the pipeline passes to :func:`hpc_pt.plots.recon_figure`."""
    import hpc_pt.plots as plots

    seen = {}
    real = plots.recon_figure

    def spy(vol, hist, path, **kw):
        seen.update(kw)
        return real(vol, hist, path, **kw)

    monkeypatch.setattr(plots, "recon_figure", spy)
    return seen


def test_pipeline_figure_gets_voxel_size_model_and_truth_snr(tmp_path, monkeypatch):
    """reconstruct() passes the voxel size, the forward model and the SNR against the CXI truth group."""
    from hpc_pt import reconstruct
    from hpc_pt.io import write_cxi
    from hpc_pt.io.cxi import read_truth
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=6, probe_size=8, probe_fwhm=3, step=2, field_pad=3))
    data = tmp_path / "d.h5"
    write_cxi(ds, data)
    seen = spy_on_figure(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = reconstruct(str(data), out=str(tmp_path / "r.zarr"), method="apt", iterations=3)
    assert seen["voxel_size_m"] == pytest.approx(ds.geometry.pixel_m, rel=1e-9)
    assert seen["model"] == "linear"
    expect = truth_snr_db(res.volume, read_truth(data)["volume"])
    assert math.isfinite(seen["snr_db"]) and seen["snr_db"] == pytest.approx(expect, abs=1e-6)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_figure_has_the_truth_snr(tmp_path, monkeypatch):
    """The CLI reads the frames first (a Dataset without its truth group) and passes the path: the figure
    still gets the SNR against the file's ground truth."""
    from hpc_pt.cli import main
    from hpc_pt.io import write_cxi
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=6, probe_size=8, probe_fwhm=3, step=2, field_pad=3))
    data = tmp_path / "d.h5"
    write_cxi(ds, data)
    seen = spy_on_figure(monkeypatch)
    assert main(["reconstruct", str(data), "--iterations", "3", "--quiet", "--out", str(tmp_path / "r.zarr")]) == 0
    assert seen.get("snr_db") is not None and math.isfinite(seen["snr_db"]), seen.get("snr_db")
