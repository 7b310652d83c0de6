"""The command-line side of the decoding options: one flag per DecodeConfig field, made from its metadata, for
seq2seq-translate, seq2seq-eval, seq2seq-backtranslate and seq2seq-client; and the argparse that every command of
the project uses (a wrong value is one line, not a usage block). No torch, no gRPC.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

from .decoding import ConfigError, DecodeConfig, describe_range, field_kind, out_of_range
from .glossary import Glossary, parse_tsv


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a wrong flag or value is one line on stderr (`prog: error: ...`) and exit 2: no usage block,
    which hides the message on a narrow terminal; `--help` still shows everything."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_decode_flags(parser: argparse.ArgumentParser, defaults: bool = True) -> None:
    """One flag per DecodeConfig field (`--beam-size` ↔ beam_size), with the field's help, range and default.

    defaults=False (the client): every flag defaults to None = not given, so the server's defaults apply."""
    g = parser.add_argument_group("decoding (defaults: the paper's beam 4, α = 0.6)")
    for f in dataclasses.fields(DecodeConfig):
        flag, kind = "--" + f.name.replace("_", "-"), field_kind(f)
        text = f.metadata["help"] + (f"; {describe_range(f)}" if describe_range(f) else "")
        if kind is bool:
            g.add_argument(flag, action="store_true", default=f.default if defaults else None, help=text)
            continue
        if f.name == "glossary":  # the one option that is not a number: a file of term pairs
            g.add_argument(flag, type=read_glossary, default=f.default if defaults else None, metavar="FILE.tsv",
                           help=f"{text}. FILE.tsv: one French<TAB>English pair per line, # for comments")
            continue
        shown = "unset" if f.default is None else f.default
        g.add_argument(flag, type=in_range(f, kind) if kind in (int, float) else kind,
                       default=f.default if defaults else None, metavar=f.name.upper(), help=f"{text} (default {shown})")


def read_glossary(path: str) -> Glossary:
    """argparse type of --glossary: a TSV file of term pairs; a missing file or a bad term is a flag error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read the glossary {path}: {e}") from None
    try:
        return parse_tsv(text, where=path)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def in_range(f: dataclasses.Field, kind: type):
    """argparse type of a numeric DecodeConfig field: a value out of its range is a flag error (exit 2) before any
    work, with DecodeConfig's message (the client would otherwise ask a server first)."""
    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value: 'two'"
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{f.name} must be a finite number, got {text}")
        if out_of_range(f, value):
            raise argparse.ArgumentTypeError(f"{f.name} must be {describe_range(f)}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message for a value that does not parse
    return parse


def decode_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The DecodeConfig fields that were given on the command line (for add_decode_flags(defaults=False))."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig)}
    return {name: value for name, value in values.items() if value is not None}


def decode_config_from_args(args: argparse.Namespace) -> DecodeConfig:
    """DecodeConfig from the flags; a value out of range raises ConfigError with the field's allowed range."""
    return DecodeConfig(**decode_options_from_args(args))


def require(prog: str, modules: tuple[str, ...], install: str) -> None:
    """Exit with one line naming the extra to install when a console script's optional packages are missing (a plain
    `pip install .` installs every console script but not every extra)."""
    import importlib.util
    import sys

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # a dotted name whose parent is missing ("google" of "google.protobuf")
            return True

    missing = [m for m in modules if absent(m)]
    if missing:
        sys.exit(f"{prog}: error: {', '.join(missing)} not installed; {prog} needs: pip install {install}")
