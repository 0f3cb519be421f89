"""Flower client side of acme-flwr (installed as ``acme_flwr.clients``; top-level ``clients`` inside a FAB).

Names load on first use (``acme_flwr.lazy``), so that ``flwr run``'s check of ``clients.client_app`` does not
import torch and the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acme_flwr.lazy import lazy_exports

if TYPE_CHECKING:
    from .handlers import AcmeClient
    from .modes import TrainMode, register_mode
    from .state import DeviceState

__all__ = ["AcmeClient", "DeviceState", "TrainMode", "register_mode"]
__getattr__ = lazy_exports(__name__, {"AcmeClient": ".handlers", "DeviceState": ".state", "TrainMode": ".modes",
                                      "register_mode": ".modes"})
