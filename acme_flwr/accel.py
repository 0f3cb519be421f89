"""Where models and batches run: the one helper every tier places tensors through (``run.device``, ``run.precision``).

A tier moves its model once (``module.to(resolve_device(...))``); every loop then moves its batches to the device of
the model it feeds (:func:`to_model`) and runs forward passes under :func:`autocast`, whose precision is set for a
block of work by :func:`precision` (a context variable, so nothing is passed through every call). Tensors that leave
a tier (wire messages, numpy results) are always CPU: :func:`acme_flwr.protocol.arrays_from_state` copies to CPU.
On a CPU-only machine ``auto`` is the CPU and everything below is a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import platform
from collections.abc import Iterator

import torch
from torch import nn

from acme_flwr.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # and "cuda:N"
PRECISIONS = ("fp32", "bf16")
_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("acme_precision", default="fp32")


def check_device(spec: str) -> str:
    """Validate a ``run.device`` value without touching CUDA (config validation runs on every machine)."""
    head, _, index = spec.partition(":")
    if head not in DEVICES or (index and (head != "cuda" or not index.isdigit())):
        raise ConfigError(f"run.device={spec!r}; allowed: auto, cpu, cuda, cuda:N")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device if one is visible, else the CPU; ``cuda``/``cuda:N`` must exist."""
    check_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={spec!r} but no CUDA device is visible here; use run.device=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"run.device={spec!r} but only {torch.cuda.device_count()} CUDA devices are visible")
    return device


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def to_model(module: nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` moved to ``module``'s device (non-blocking from pinned memory); unchanged on the CPU."""
    device = device_of(module)
    if device.type == "cpu":
        return tensors
    return tuple(t.to(device, non_blocking=True) for t in tensors)


@contextlib.contextmanager
def precision(value: str) -> Iterator[None]:
    """Run the enclosed work at ``value`` (``fp32`` or ``bf16``, validated)."""
    if value not in PRECISIONS:
        raise ConfigError(f"run.precision={value!r}; allowed: {list(PRECISIONS)}")
    token = _PRECISION.set(value)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_threads(n: int) -> int:
    """``run.threads`` → the thread count to use: ``n`` itself, or every core this process may run on for 0."""
    if n < 0:
        raise ConfigError(f"run.threads={n}; allowed: 0 (every core) or a positive count")
    return n or cores()


def provenance() -> dict[str, object]:
    """What besides the config and the versions moves a run's floats: the CPU (its vector ISA picks the kernels),
    the cores this process may use, and this process's intra-op thread count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": cores(),
            "threads": torch.get_num_threads(), "cuda": torch.version.cuda if torch.cuda.is_available() else None}


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the enclosed work with ``n`` intra-op threads, then restore the previous count. For large-model work
    only (the cloud's backbone stages): the headers' tiny ops run best on one thread, and on more they spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def current_precision() -> str:
    """The precision the enclosing :func:`precision` block set (``fp32`` outside any)."""
    return _PRECISION.get()


def autocast(device: torch.device | nn.Module) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast where the current precision asks for it and the device supports it; otherwise a no-op."""
    device = device_of(device) if isinstance(device, nn.Module) else device
    if _PRECISION.get() != "bf16":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def pin(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Page-locked copy for fast, asynchronous host-to-GPU copies (only when the target is CUDA)."""
    return t.pin_memory() if device.type == "cuda" and not t.is_pinned() else t
