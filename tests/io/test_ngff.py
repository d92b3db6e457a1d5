"""The Zarr output is valid OME-NGFF 0.5 and says what its numbers mean.

Checked with two maintained implementations of the NGFF spec, both in the ``test`` extra:

* ``ome-zarr-models`` (pydantic models of the spec; ``v05.Image.from_zarr`` validates a group: axes,
  coordinate transformations, ordered scales, every multiscale array present with matching
  ``dimension_names``);
* ``ome-zarr`` (ome-zarr-py, the reader behind napari-ome-zarr; its ``Reader`` reads NGFF 0.5 on
  zarr-python 3 and returns the pyramid as dask arrays).

Stores come from every writer: :func:`write_volume` (serial), the begin / rows / finish sequence that
MPI and Dask ranks use (rows written in pieces by several "ranks"), and the pipeline on three in-process
ranks.
"""
import warnings

import numpy as np
import pytest
import zarr

from hpc_pt import conventions as cv
from hpc_pt.io import read_volume
from hpc_pt.io.zarr_store import begin_volume, downsample2, finish_volume, quantities, write_volume, write_volume_rows

# both validators are in the `test` extra: a missing one is a broken install, not a reason to skip
import ome_zarr.io as ome_io  # noqa: E402
import ome_zarr.reader as ome_reader  # noqa: E402
import ome_zarr_models.v05.image as ome_image  # noqa: E402

VOXEL = 12e-9  # 12 nm


def volume(shape=(7, 10, 10), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 1e-6 + 1j * rng.standard_normal(shape) * 1e-8).astype(np.complex64)


def validate(path):
    """The ome-zarr-models Image of the store (raises pydantic.ValidationError if it is not NGFF 0.5)."""
    return ome_image.Image.from_zarr(zarr.open_group(str(path), mode="r"))


def read_with_ome_zarr(path):
    """(multiscale node, its level arrays as NumPy) via ome-zarr-py's reader."""
    loc = ome_io.parse_url(str(path), mode="r")
    assert loc is not None and loc.version == "0.5"
    nodes = list(ome_reader.Reader(loc)())
    assert nodes, "ome-zarr-py found no image in the store"
    node = nodes[0]
    assert any(isinstance(s, ome_reader.Multiscales) for s in node.specs)
    return node, [np.asarray(d) for d in node.data]


def check_store(path, vol, voxel_m):
    """Everything a valid hpc-pt store must satisfy, whichever writer made it."""
    img = validate(path)
    ms = img.ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["z", "y", "x"]
    assert all(a.type == "space" and a.unit == "nanometer" for a in ms.axes)
    assert [d.path for d in ms.datasets] == ["0", "1"]
    s0 = ms.datasets[0].coordinateTransformations[0].scale
    s1 = ms.datasets[1].coordinateTransformations[0].scale
    t1 = ms.datasets[1].coordinateTransformations[1].translation
    assert s0 == pytest.approx([voxel_m * 1e9] * 3, rel=1e-9)
    assert s1 == pytest.approx([2 * voxel_m * 1e9] * 3, rel=1e-9)
    assert t1 == pytest.approx([voxel_m * 1e9 / 2] * 3, rel=1e-9)  # 2x2x2 block centres
    g = zarr.open_group(str(path), mode="r")
    for name in ("volume", "0", "1", "beta"):
        assert g[name].metadata.dimension_names == ("z", "y", "x"), name
        assert g[name].attrs["units"] == "dimensionless"
    node, levels = read_with_ome_zarr(path)
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    np.testing.assert_array_equal(levels[0], vol.real)
    np.testing.assert_allclose(levels[1], downsample2(vol.real.astype(np.float32))[0],
                               atol=1e-6 * float(np.abs(vol.real).max()))
    u, attrs = read_volume(path)  # the complex volume hpc-pt reads back is untouched by the NGFF metadata
    assert u.dtype == np.complex64
    np.testing.assert_array_equal(u, vol)
    return attrs


def test_write_volume_is_valid_ngff_05_and_readable_by_ome_zarr(tmp_path):
    vol = volume()
    out = tmp_path / "r.zarr"
    write_volume(out, vol, VOXEL, attrs={"model": "exp", "energy_ev": 6200.0}, chunks_z=3,
                 tables={"history": {"iteration": np.arange(1, 4), "objective": [3.0, 2.0, 1.0]}},
                 arrays={"probe": np.ones((4, 4), np.complex64)})
    attrs = check_store(out, vol, VOXEL)
    assert attrs["voxel_size_nm"] == pytest.approx(12.0)
    assert attrs["ome"]["version"] == "0.5"


def test_rank_wise_writes_get_the_same_metadata(tmp_path):
    """begin_volume / write_volume_rows / finish_volume, as MPI or Dask ranks call them: three writers,
    rows 0-2, 3-4 (the level-1 block 2-3 straddles the first boundary: next_row), 5-6."""
    vol = volume()
    serial = tmp_path / "serial.zarr"
    ranked = tmp_path / "ranked.zarr"
    attrs = {"model": "linear", "energy_ev": 6200.0}
    write_volume(serial, vol, VOXEL, attrs=attrs, chunks_z=1)
    tmp = begin_volume(ranked, vol.shape, VOXEL, attrs=attrs, chunks_z=1, token="t")
    for z0, z1 in ((5, 7), (0, 3), (3, 5)):  # any order: each writer owns its rows
        nxt = vol[z1] if z1 < vol.shape[0] else None
        write_volume_rows(tmp, z0, vol[z0:z1], next_row=nxt)
    finish_volume(tmp, ranked)
    a_ranked = check_store(ranked, vol, VOXEL)
    a_serial = check_store(serial, vol, VOXEL)
    for key in ("ome", "units", "quantities", "voxel_size_m", "voxel_size_nm", "axes", "shape"):
        assert a_ranked[key] == a_serial[key], key
    gs, gr = zarr.open_group(str(serial), mode="r"), zarr.open_group(str(ranked), mode="r")
    for name in ("volume", "0", "1", "beta"):
        assert gs[name].attrs.asdict() == gr[name].attrs.asdict()


def test_threaded_pipeline_store_is_valid_ngff(tmp_path):
    """The pipeline on three in-process ranks (each writes its own slab rows) writes a valid store."""
    from threadcomm import run_threads

    from hpc_pt import reconstruct
    from hpc_pt.simulate import SimulationConfig, simulate_dataset

    ds = simulate_dataset(SimulationConfig(size=16, angles=4, probe_size=8, probe_fwhm=3, step=3, field_pad=3))
    out = tmp_path / "r.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_threads(3, lambda comm: reconstruct(ds, out=str(out), comm=comm, method="apts",
                                                          iterations=2, init="zeros"))
    attrs = check_store(out, results[0].volume, ds.geometry.pixel_m)
    assert attrs["parallel"]["ranks"] == 3
    assert attrs["quantities"]["forward_model"] == "linear"


def test_odd_and_flat_shapes_validate(tmp_path):
    """An odd length drops the last slice of level 1; an axis of length 1 keeps factor 1 (scale equal to
    level 0 there, no translation); both are still valid NGFF."""
    for shape in ((5, 7, 7), (1, 4, 4)):
        out = tmp_path / f"v{shape[0]}.zarr"
        write_volume(out, volume(shape), VOXEL)
        ms = validate(out).ome_attributes.multiscales[0]
        s1 = ms.datasets[1].coordinateTransformations[0].scale
        expect = [VOXEL * 1e9 * (2 if n >= 2 else 1) for n in shape]
        assert s1 == pytest.approx(expect, rel=1e-9)
        assert zarr.open_group(str(out), mode="r")["1"].shape == tuple(n // 2 if n >= 2 else 1 for n in shape)


def test_units_and_meaning_stated_in_the_store(tmp_path):
    vol = volume((2, 4, 4))
    write_volume(tmp_path / "e.zarr", vol, VOXEL, attrs={"model": "exp", "energy_ev": 6200.0})
    write_volume(tmp_path / "l.zarr", vol, VOXEL, attrs={"model": "linear"})
    write_volume(tmp_path / "u.zarr", vol, VOXEL)
    e = read_volume(tmp_path / "e.zarr")[1]
    lin = read_volume(tmp_path / "l.zarr")[1]
    unk = read_volume(tmp_path / "u.zarr")[1]
    assert e["voxel_size_nm"] == pytest.approx(12.0) and e["units"]["voxel_size_nm"] == "nm"
    q = e["quantities"]
    assert q["forward_model"] == "exp"
    assert "refractive-index decrement" in q["delta"] and "dimensionless" in q["delta"]
    assert "absorption index" in q["beta"] and "dimensionless" in q["beta"]
    assert q["k_dz_rad"] == pytest.approx(cv.k_dz(6200.0, VOXEL), rel=1e-12)
    ql = lin["quantities"]
    assert ql["forward_model"] == "linear" and "not a refractive index" in ql["model_meaning"]
    assert ql["delta"].startswith("Re u") and ql["beta"].startswith("Im u") and "k_dz_rad" not in ql
    assert unk["quantities"]["forward_model"] == "unknown"
    assert "exp" in unk["quantities"]["model_meaning"] and "linear" in unk["quantities"]["model_meaning"]
    g = zarr.open_group(str(tmp_path / "e.zarr"), mode="r")
    assert g["0"].attrs["quantity"] == q["delta"] and g["beta"].attrs["quantity"] == q["beta"]
    assert quantities("exp") == {k: v for k, v in q.items() if k != "k_dz_rad"}
