"""What the commands share: checks of output paths (fail on a bad --out before any work, create folders after),
and the detection-setting options, built from their one declaration (:class:`ssd.settings.DetectSettings`).

::

    add_setting_options(parser, defaults, names)   --min-score SCORE ... with each field's help and default
    settings_from_args(args, defaults, names)      -> DetectSettings, errors naming the option (--min-score ...)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ssd.errors import SSDError
from ssd.settings import check_setting, help_with_default, option_name, setting_spec

if TYPE_CHECKING:
    from ssd.settings import DetectSettings


def _text_reader(name: str):
    """An argparse ``type``: the option's text -> its value, read as the setting declares (ranges are checked
    by :func:`settings_from_args`, so that a bad value is a one-line error naming the option)."""
    parse = setting_spec(name).parse

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    read.__name__ = option_name(name, "--")
    return read


def positive(kind):
    """An argparse ``type``: a number of ``kind`` (int or float) above zero, else the option's own error."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text} is not positive")
        return v

    return parse


def non_negative(text: str) -> float:
    """An argparse ``type``: a float of zero or more."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return v


def add_setting_options(parser: Any, defaults: DetectSettings, names: Sequence[str]) -> None:
    """``--min-score`` and the like on ``parser`` (or an argument group) for the settings ``names``: help and
    metavar from each setting's declaration, defaults from ``defaults``."""
    for name in names:
        spec = setting_spec(name)
        kwargs: dict[str, Any] = {"metavar": spec.metavar, "help": help_with_default(name, defaults)}
        if spec.repeatable:
            kwargs.update(action="append", default=[], type=str)
        else:
            kwargs.update(default=getattr(defaults, name), type=_text_reader(name))
        parser.add_argument(option_name(name, "--"), **kwargs)


def settings_from_args(args: argparse.Namespace, defaults: DetectSettings, names: Sequence[str]) -> DetectSettings:
    """``defaults`` with the values of the options :func:`add_setting_options` added; :class:`SSDError` naming
    the option (``--min-score must be in [0, 1], got 1.5``). Repeated options are joined (each value may
    list several names separated by commas)."""
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name)
        spec = setting_spec(name)
        if spec.repeatable:
            value = tuple(v for text in value for v in spec.parse(text)) if value else getattr(defaults, name)
        values[name] = check_setting(name, value, "--")
    return defaults.replace(**values)


def writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Check that ``path`` is, or can be created as, a writable folder (created later, once all options pass)."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise SSDError(f"{option} {path}: exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise SSDError(f"{option} {path}: the folder is not writable")
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SSDError(f"{option} {path}: cannot create the folder ({ancestor} is not a folder)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SSDError(f"{option} {path}: cannot create the folder ({ancestor} is not writable)")
    return p


def create_dirs(folders: list[tuple[Path, str]]) -> None:
    for folder, option in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SSDError(f"{option} {folder}: cannot create the folder ({err.strerror or err})") from err


def writable_file(path: str | os.PathLike, option: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise SSDError(f"{option} {path}: is a folder; give a file name")
    writable_dir(p.parent, option)
    if p.exists() and not os.access(p, os.W_OK):
        raise SSDError(f"{option} {path}: the file is not writable")
    return p
