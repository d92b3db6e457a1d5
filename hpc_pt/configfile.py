"""Reading settings files (YAML or TOML) strictly, shared by every layer that takes a config file.

:func:`load_settings` turns every problem with such a file into one :class:`~hpc_pt.errors.InputError`
line naming the file and the fix: a missing or unreadable file, an unknown suffix, bytes that are not
UTF-8 text or hold NUL characters, a syntax error (with its line and column), a key given twice in one
table (YAML's last-one-wins would drop the first silently; TOML already forbids it), or a top level that
is not a table.
"""
from __future__ import annotations

import os
import tomllib

from .errors import InputError

__all__ = ["load_settings", "SUFFIXES"]

SUFFIXES = (".toml", ".yaml", ".yml")


def _strict_loader():
    """A yaml.SafeLoader subclass that refuses a key repeated within one mapping."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_settings(path, what: str = "config file") -> dict:
    """The table of settings in the YAML (.yaml / .yml) or TOML (.toml) file ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    what : str
        How the file is named in error messages ("config file", "description file", ...).

    Returns
    -------
    dict
        The parsed top-level table (an empty YAML file gives ``{}``).

    Raises
    ------
    InputError
        One line naming the file, the problem and the fix (see the module docstring).
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputError(f"{what} {p} does not exist; pass an existing YAML or TOML file")
    suffix = os.path.splitext(p)[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{what} {p} has unknown type {suffix!r}; use .toml, .yaml or .yml")
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise InputError(f"cannot read {what} {p}: {e.strerror or e}; check its permissions") from None
    nul = raw.find(bytes(1))
    if nul >= 0:
        raise InputError(f"{what} {p} holds NUL bytes (first at byte {nul}): it is not a text file; "
                         "write the settings as plain YAML or TOML text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    import yaml

    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
            data = {} if data is None else data
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        msg = " ".join(str(e).replace('in "<unicode string>",', "").split())
        raise InputError(f"cannot parse {what} {p} ({msg}); fix the file's syntax") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {p} must hold a table of key: value settings, not a {type(data).__name__}")
    return data
