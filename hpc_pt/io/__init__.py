"""File formats (layer `io`, docs/architecture.md): CXI input, Zarr / OME-Zarr volumes, provenance, summaries.

See docs/formats.md for every path, dtype, unit and convention.
"""
from .cxi import (
    CxiEntry,
    CxiIndex,
    check_output_path,
    ensure_probe,
    read_cxi,
    read_frames,
    read_truth,
    scan_cxi,
    write_cxi,
)
from .convert import convert, convert_nexus, convert_numpy
from .provenance import file_checksum, provenance
from .summary import describe, format_description
from .zarr_store import read_table, read_volume, write_volume

__all__ = [
    "CxiEntry", "CxiIndex", "check_output_path", "ensure_probe", "convert", "convert_nexus", "convert_numpy",
    "read_cxi", "read_frames", "read_truth", "scan_cxi", "write_cxi",
    "file_checksum", "provenance", "describe", "format_description", "read_table", "read_volume", "write_volume",
]
