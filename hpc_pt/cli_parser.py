"""The command line's argument parser: one-line usage errors, and help that shows every option's real default.

* :class:`ArgumentParser` prints an argparse error (unknown flag, bad value, missing argument) as one line
  ``error: <what>; see `hpc-pt SUB --help``` on stderr and exits 2, like every other user error; the
  usage block stays available through ``--help``. Under a multi-process launch (``mpiexec -n P``) only
  rank 0 prints it. Subparsers inherit the class (argparse's ``add_subparsers`` uses the parent's type).
* :func:`add_model_flags` turns each field of a pydantic settings model into a flag (``--probe-size`` for
  ``probe_size``): type and choices from the annotation, help from the field's description. Such flags
  default to None, so that a config file's value is only overridden when the flag is given.
* :func:`explain_defaults` then appends ``(default: X)`` to every option's help, with X the real default:
  the settings model's field default for those None-default flags, else argparse's default. An option
  whose help already says ``default`` (a default that depends on other settings) is left as written.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import typing

from pydantic import BaseModel


def _single_line(text: str) -> str:
    return " ".join(str(text).split())


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line naming the fix (exit code 2). Abbreviated
    options are refused (``--iteration 5`` is a typo, not ``--iterations 5``), subcommands included."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        """Print ``error: <message>; see `<prog> --help``` on stderr (rank 0 only under ``mpiexec``), exit 2."""
        from .parallel.launch import launch_world

        world = launch_world()
        if world is None or world[1] == 1 or world[0] == 0:
            self._print_message(f"error: {_single_line(message)}; see `{self.prog} --help`\n", sys.stderr)
        self.exit(2)

    def parse_args(self, args=None, namespace=None):
        """Like argparse's, but an unknown argument is reported by the subcommand's parser (its ``--help``
        is the one to read), with the closest known option when one is near."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(ns) or self
            known = [s for a in parser._actions for s in a.option_strings]
            unknown = [w for w in extras if w.startswith("-")] or extras
            hints = []
            for word in unknown:
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.75) \
                    if word.startswith("-") else []
                hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
            parser.error(("unknown option " if unknown[0].startswith("-") else "unexpected argument ")
                         + ", ".join(hints))
        return ns

    def _chosen_subparser(self, ns):
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(ns, action.dest, None))
        return None


def subparsers(parser: argparse.ArgumentParser) -> dict:
    """{name: subparser} of ``parser`` (empty when it has no subcommands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _literal_choices(annotation):
    """The values of a ``Literal[...]`` annotation (also inside ``Literal[...] | None``), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal:
        return tuple(typing.get_args(args[0]))
    return None


def _flag_type(annotation):
    """(argparse type, choices) for a field annotation: Literal -> its values' type and the values;
    ``X | None`` -> X; int and float as themselves; anything else (str, paths) as str."""
    choices = _literal_choices(annotation)
    if choices is not None:
        kinds = {type(c) for c in choices}
        return (kinds.pop() if len(kinds) == 1 else str), choices
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0] if len(args) == 1 else str
    return (base if base in (int, float) else str), None


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], exclude=()) -> list:
    """Add one ``--field-name`` flag per field of ``model`` (except ``exclude``), default None.

    A ``bool`` field becomes a ``--name`` / ``--no-name`` switch (``bool | None`` too); a field's
    ``json_schema_extra={"metavar": ...}`` names its value in the usage line.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where the flags go.
    model : type
        The pydantic settings model.
    exclude : iterable of str
        Fields without a flag.

    Returns
    -------
    list
        The argparse actions added, in field order.
    """
    added = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = (info.description or name.replace("_", " ")).replace("%", "%%")
        args = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
        if args == [bool]:
            added.append(parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                             help=help_text))
            continue
        kind, choices = _flag_type(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        added.append(parser.add_argument(flag, type=kind, choices=choices, default=None, help=help_text,
                                         metavar=extra.get("metavar")))
    return added


def show_value(value) -> str:
    """A default as the help shows it: 14.0 -> '14', True -> 'on', [] -> 'none'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict, set)):
        return ", ".join(show_value(v) for v in value) if value else "none"
    return str(value)


def _takes_value(action) -> bool:
    return bool(action.option_strings) and action.nargs != 0 and not isinstance(
        action, (argparse._HelpAction, argparse._VersionAction))


def explain_defaults(parser: argparse.ArgumentParser, model: type[BaseModel] | None = None) -> None:
    """Append the real default (or "required") to the help of every option of ``parser`` that takes a value.

    A None-default option whose ``dest`` is a field of ``model`` shows that field's default, and gets the
    field's ``Literal`` values as choices when it has none (and the field's description as help when it has
    none). Help that already mentions a default is kept.
    Options with a None default outside ``model`` must say their default in their help text.
    """
    fields = model.model_fields if model is not None else {}
    for action in parser._actions:
        if not _takes_value(action) or action.help is argparse.SUPPRESS:
            continue
        field = fields.get(action.dest)
        if not action.help and field is not None and field.description:
            action.help = field.description.replace("%", "%%")
        text = action.help or ""
        if field is not None and action.default is None and action.choices is None:
            choices = _literal_choices(field.annotation)
            if choices is not None:
                action.choices = choices
        if action.required:
            if "required" not in text:
                action.help = f"{text} (required)".strip()
            continue
        if "default" in text.lower():
            continue
        shown = action.default
        if shown is None and field is not None and not field.is_required():
            shown = field.get_default(call_default_factory=True)
        if shown is None or shown is argparse.SUPPRESS:
            continue
        action.help = f"{text} (default: {show_value(shown).replace('%', '%%')})".strip()


__all__ = ["ArgumentParser", "add_model_flags", "explain_defaults", "show_value", "subparsers"]
