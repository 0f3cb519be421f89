"""Device-side training modes, one per file, registered by name (:data:`DEVICE_MODES`)."""

from __future__ import annotations

from . import ditto, fedbabu, fedrep  # noqa: F401 - registers the modes
from .base import DEVICE_MODES, LocalRound, TrainMode, register_mode

__all__ = ["DEVICE_MODES", "LocalRound", "TrainMode", "register_mode"]
