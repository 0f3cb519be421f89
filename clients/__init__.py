"""Flower client side of acme-flwr (installed as ``acme_flwr.clients``; top-level ``clients`` inside a FAB)."""

from .handlers import AcmeClient

__all__ = ["AcmeClient"]
