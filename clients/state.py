"""One strategy's state on one device, typed: what the handlers keep between messages, and its checkpoint.

Flower keeps a node's ``context.state`` (a ``RecordDict``) between its messages; :class:`DeviceState` is the one
place that knows how a strategy's state is laid out in it (``"<tag>.setup"``, ``"<tag>.header"``,
``"<tag>.pruner"``, ``"<tag>.personal"``) and on disk (one ``.npz`` per device and round). The sub-backbone is not
part of it: it is kept once per fingerprint in the device's model store (:mod:`acme_flwr.model_store`), and the
context holds only its fingerprint (``"acme.backbone.<fingerprint>"``, one entry however many strategies deploy it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from acme_flwr import protocol as P

#: the weight sets a device state holds, in checkpoint order (``header`` always; the others when present)
WEIGHT_KINDS = ("header", "pruner", "personal")
_SETUP_KEY = "setup/json"


def backbone_key(digest: str) -> str:
    """Where a device notes (in ``context.state``) that it holds the sub-backbone ``digest`` in its model store."""
    return f"acme.backbone.{digest}"


@dataclass
class DeviceState:
    """What one strategy (``tag``) keeps on one device between messages.

    Parameters
    ----------
    tag
        The strategy's tag (its name): one device serves several strategies of a run.
    arch
        The sub-backbone's architecture as JSON (``ElasticViT.from_arch``), from the setup message.
    header_spec
        The header's spec as JSON (``build_header``), from setup or replaced by a federated NAS ``install``.
    backbone_fp
        The sub-backbone's content fingerprint: its key in the device's model store.
    header
        The header's current weights (as shipped, then trained and pruned).
    pruner
        The gate pruner's state (momentum, mask, steps) once the device has pruned; else ``None``.
    personal
        Ditto's personal header once trained; else ``None``.
    """

    tag: str
    arch: str
    header_spec: str
    backbone_fp: str
    header: ArrayRecord
    pruner: ArrayRecord | None = None
    personal: ArrayRecord | None = None
    extra: dict[str, str] = field(default_factory=dict)  # setup keys this version does not know, kept as they are

    # ------------------------------------------------------------------------------------------------ context
    @staticmethod
    def has(context: Context, tag: str) -> bool:
        return f"{tag}.setup" in context.state

    @classmethod
    def load(cls, context: Context, tag: str) -> DeviceState:
        """This device's state for ``tag``; RuntimeError if the strategy never set the device up."""
        if not cls.has(context, tag):
            raise RuntimeError(f"no setup for strategy tag {tag!r} on this node: the server must send {P.SETUP} first")
        setup = dict(context.state[f"{tag}.setup"])
        known = {"arch", "header", "backbone-fp"}
        return cls(tag, str(setup["arch"]), str(setup["header"]), str(setup["backbone-fp"]),
                   context.state[f"{tag}.header"], context.state.get(f"{tag}.pruner"),
                   context.state.get(f"{tag}.personal"), {k: str(v) for k, v in setup.items() if k not in known})

    def save(self, context: Context) -> None:
        """Write this state into ``context.state`` (absent optional parts removed)."""
        context.state[f"{self.tag}.setup"] = ConfigRecord({**self.extra, "arch": self.arch,
                                                           "header": self.header_spec,
                                                           "backbone-fp": self.backbone_fp})
        context.state[backbone_key(self.backbone_fp)] = ConfigRecord({"fingerprint": self.backbone_fp})
        context.state[f"{self.tag}.header"] = self.header
        for kind in ("pruner", "personal"):
            value = getattr(self, kind)
            if value is None:
                context.state.pop(f"{self.tag}.{kind}", None)
            else:
                context.state[f"{self.tag}.{kind}"] = value

    # ------------------------------------------------------------------------------------------------ checkpoint
    def checkpoint(self, path: Path) -> None:
        """Save every field to ``path`` (``.npz``), atomically."""
        arrays: dict[str, np.ndarray] = {}
        for kind in WEIGHT_KINDS:
            record = getattr(self, kind)
            if record is not None:
                arrays.update({f"{kind}/{k}": v.numpy() for k, v in record.items()})
        setup = {"tag": self.tag, "arch": self.arch, "header": self.header_spec, "backbone-fp": self.backbone_fp,
                 "extra": self.extra}
        arrays[_SETUP_KEY] = np.frombuffer(json.dumps(setup).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def from_checkpoint(cls, path: Path) -> DeviceState:
        """The state :meth:`checkpoint` saved at ``path``."""
        parts: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in WEIGHT_KINDS}
        with np.load(path) as saved:
            setup = json.loads(saved[_SETUP_KEY].tobytes().decode()) if _SETUP_KEY in saved.files else {}
            for key in saved.files:
                kind, _, name = key.partition("/")
                if kind in parts:
                    parts[kind][name] = saved[key]
        records = {kind: ArrayRecord({k: Array(v) for k, v in part.items()}) if part else None
                   for kind, part in parts.items()}
        return cls(str(setup.get("tag", "")), str(setup.get("arch", "")), str(setup.get("header", "")),
                   str(setup.get("backbone-fp", "")), records["header"] or ArrayRecord(), records["pruner"],
                   records["personal"], dict(setup.get("extra", {})))

    def restore_weights(self, saved: DeviceState) -> None:
        """Take the weights (header, pruner, personal) of a saved state; the setup fields stay the ones the
        setup message just delivered (the package the resumed run ships)."""
        for kind in WEIGHT_KINDS:
            setattr(self, kind, getattr(saved, kind))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceState):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, ArrayRecord) or isinstance(b, ArrayRecord):
                if not _same_arrays(a, b):
                    return False
            elif a != b:
                return False
        return True


def _same_arrays(a: ArrayRecord | None, b: ArrayRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
