"""The config-file schema is generated from the settings models and every method's options model: every
example config validates, and what the run would refuse (an unknown setting or option, a wrong type, an
unknown method) the schema refuses too."""
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from hpc_pt.cli import main
from hpc_pt.pipeline import config_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _settings(path: Path, kind: str) -> dict:
    data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else yaml.safe_load(path.read_text())
    return data.get(kind, data)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.*")), ids=lambda p: p.name)
def test_examples_validate(path):
    kind = "simulate" if path.name.startswith("simulate") else "reconstruct"
    jsonschema.validate(_settings(path, kind), config_schema(kind))


def test_the_schema_refuses_what_the_run_refuses():
    schema = config_schema("reconstruct")
    ok = {"method": "admm", "iterations": 5, "options": {"rho_rel": 0.3, "balance": False}}
    jsonschema.validate(ok, schema)
    jsonschema.validate({"options": {"cg_max_iter": 8}}, schema)  # no method: APT's options
    for bad in ({"method": "admm", "options": {"cg_max_iter": 8}},  # an APT option for ADMM
                {"options": {"rho_rel": 0.3}},  # an ADMM option for the default method
                {"method": "nope"}, {"iterations": "many"}, {"itrations": 5}, {"noise": "laplace"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"size": "big"}, config_schema("simulate"))


def test_schema_command(capsys):
    assert main(["schema", "reconstruct"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["properties"]["method"]["enum"][:5] == ["apt", "apts", "admm", "gd", "two-step"]
