"""Detection settings: one typed, validated declaration per option, for the API and every command.

::

    settings (DetectSettings: min_score, max_overlap, top_k, suppress, batch_size)
      -> DetectSettings.replace(**overrides)          (a call's or a request's own values, checked)
      -> check_model(class_names, num_priors)           (the model's classes and prior count)
      -> Detector / ssd detect / ssd serve / evaluate()

Each field carries its default, its help text and how a text value (a command-line option, a query parameter)
is read, so the ``ssd detect``, ``ssd serve`` and ``ssd eval`` parsers build their options from the fields.
Two sets of defaults that differ in one value: ``DetectSettings()``, the display settings of
:class:`~ssd.detector.Detector`, ``ssd detect`` and ``ssd serve``, keep detections scoring above 0.2 (what a person
wants to see, as the tutorial's detect.py); :meth:`DetectSettings.for_evaluation`, the settings of ``ssd eval`` and
:func:`~ssd.evaluate.evaluate`, keep those above 0.01, since average precision integrates over the whole
precision-recall curve and low-scoring detections still add recall to it. Both use the paper's NMS at IoU 0.45
and at most 200 detections per image.

Importing this module does not import torch (the command line builds its help from it).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ssd.errors import SSDError

__all__ = [
    "DECODING_SETTINGS", "DetectSettings", "SettingSpec", "check_setting", "help_with_default", "option_name",
    "setting_spec",
]  # fmt: skip

DECODING_SETTINGS: tuple[str, ...] = ("min_score", "max_overlap", "top_k", "suppress")
"""The settings that decide which detections come back (``batch_size`` only groups the work): what a service
request may set, what ``ssd detect --json`` and the service's answers echo."""


# --- the rules ------------------------------------------------------------------------------------


def option_name(name: str, prefix: str = "") -> str:
    """How a message names setting ``name``: ``min_score`` in the API, ``--min-score`` with ``prefix="--"``."""
    return prefix + (name.replace("_", "-") if prefix == "--" else name)


def _fraction(value: Any) -> str | None:
    """Scores and overlaps: finite reals in [0, 1] (an overlap of 0 suppresses any box touching a better one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:  # NaN too
        return "must be in [0, 1]"
    return None


def _count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return "must be a positive integer"
    return None


def _class_names(value: Any) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(c, str) and c for c in value):
        return "must be class names"
    return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _name_list(text: str) -> tuple[str, ...]:
    """``"person, car"`` -> ``("person", "car")``: names separated by commas, blanks dropped."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


@dataclass(frozen=True)
class SettingSpec:
    """What a settings field declares besides its default: the help text of its option, the option's
    ``metavar``, ``parse`` (a text value -> the value; ``ValueError`` saying why not), ``rule`` (the value ->
    ``None`` or why it is refused) and ``convert`` (the accepted value -> its stored type). ``repeatable``
    options may be given several times, their values joined."""

    help: str
    metavar: str
    parse: Callable[[str], Any]
    rule: Callable[[Any], str | None]
    convert: Callable[[Any], Any]
    repeatable: bool = False


def _setting(default: Any, spec: SettingSpec) -> Any:
    return field(default=default, metadata={"spec": spec})


def setting_spec(name: str) -> SettingSpec:
    """The declaration of setting ``name`` (a :class:`DetectSettings` field)."""
    for f in dataclasses.fields(DetectSettings):
        if f.name == name:
            return f.metadata["spec"]
    raise TypeError(f"unknown setting {name!r}; settings are {', '.join(_names())}")


def _names() -> list[str]:
    return [f.name for f in dataclasses.fields(DetectSettings)]


def _as_names(value: Any) -> Any:
    """A single name (a string) or any iterable of names -> a tuple (left as it is when not iterable)."""
    if isinstance(value, str):
        return (value,)
    if value is None:
        return ()
    return tuple(value) if isinstance(value, Iterable) else value


def check_setting(name: str, value: Any, prefix: str = "") -> Any:
    """``value`` of setting ``name`` checked and converted to its stored type: the one rule every command and
    API applies. Raises :class:`SSDError` naming it as :func:`option_name` ``(name, prefix)``."""
    spec = setting_spec(name)
    if spec.repeatable:
        value = _as_names(value)
    why = spec.rule(value)
    if why is not None:
        raise SSDError(f"{option_name(name, prefix)} {why}, got {value!r}")
    return spec.convert(value)


# --- the settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectSettings:
    """How raw outputs become detections: thresholds, NMS, top-k, suppressed classes, and the batch size.

    Validated on construction (:class:`SSDError` naming the setting); ``replace(**overrides)`` gives a copy with
    some values changed. What depends on a model (class names, its prior count) is checked by
    :meth:`check_model`.
    """

    min_score: float = _setting(0.2, SettingSpec(
        "keep detections scoring above this, in [0, 1]", "SCORE", _number, _fraction, float))
    max_overlap: float = _setting(0.45, SettingSpec(
        "per-class NMS: suppress boxes overlapping a better one by more than this IoU, in [0, 1]", "IOU",
        _number, _fraction, float))
    top_k: int = _setting(200, SettingSpec(
        "at most this many detections per image, up to the model's prior count", "K", _integer, _count, int))
    suppress: tuple[str, ...] = _setting((), SettingSpec(
        "never report these classes (dropped before NMS and top-k; repeat the option or separate names by "
        "commas)", "CLASS[,CLASS]", _name_list, _class_names, tuple, repeatable=True))
    batch_size: int = _setting(8, SettingSpec("images per forward pass", "N", _integer, _count, int))

    def __post_init__(self) -> None:
        for name in _names():
            object.__setattr__(self, name, check_setting(name, getattr(self, name)))

    @classmethod
    def for_evaluation(cls) -> "DetectSettings":
        """The paper's test settings, the defaults of ``ssd eval`` and :func:`~ssd.evaluate.evaluate`: every
        detection scoring above 0.01, NMS at 0.45, 200 per image; 32 images per batch."""
        return cls(min_score=0.01, max_overlap=0.45, top_k=200, batch_size=32)

    def replace(self, **overrides: Any) -> "DetectSettings":
        """A copy with ``overrides`` (setting names) changed, validated; ``TypeError`` for an unknown name."""
        unknown = sorted(set(overrides) - set(_names()))
        if unknown:
            raise TypeError(f"unknown setting {unknown[0]!r}; settings are {', '.join(_names())}")
        return dataclasses.replace(self, **overrides) if overrides else self

    def check_model(
        self, class_names: Sequence[str], num_priors: int | None = None, *, prefix: str = ""
    ) -> "DetectSettings":
        """``self``, once its suppressed classes are classes of the model and ``top_k`` is at most its prior
        count (``None``: not known); :class:`SSDError` naming the setting as :func:`option_name` otherwise."""
        unknown = [c for c in self.suppress if c not in class_names]
        if unknown:
            raise SSDError(
                f"{option_name('suppress', prefix)}: unknown class {unknown[0]!r}; the model's classes are: "
                f"{', '.join(class_names)}"
            )
        if num_priors is not None and self.top_k > num_priors:
            raise SSDError(
                f"{option_name('top_k', prefix)} must be at most the model's {num_priors} priors, got {self.top_k}"
            )
        return self

    def decoding_dict(self) -> dict[str, Any]:
        """JSON-ready values of :data:`DECODING_SETTINGS` (``suppress`` as a list)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k in DECODING_SETTINGS}  # fmt: skip



def help_with_default(name: str, defaults: DetectSettings) -> str:
    """The help text of setting ``name`` and its value in ``defaults``: one text for every command's option."""
    value = getattr(defaults, name)
    if isinstance(value, tuple):
        return setting_spec(name).help + (f" (default {','.join(value)})" if value else "")
    return f"{setting_spec(name).help} (default {value:g})"


def defaults_explained() -> str:
    """Why the commands' detection defaults differ, for their ``--help`` (from the defaults themselves)."""
    show, score = DetectSettings(), DetectSettings.for_evaluation()
    return (
        f"Detection defaults: every command uses the paper's NMS (IoU {show.max_overlap:g}) and at most "
        f"{show.top_k} detections per image; ssd detect and ssd serve keep detections scoring above "
        f"{show.min_score:g}, what a person wants to see, while ssd eval keeps those above {score.min_score:g}, "
        "since average precision integrates over the whole precision-recall curve."
    )
