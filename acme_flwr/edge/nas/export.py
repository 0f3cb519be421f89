"""Export a searched arc from the edge's shared child as a device header (fixes ACME §7.9: the original never did).

:func:`export_header` copies the child's weights for one arc into a
:class:`~acme_flwr.device.searched_header.SearchedHeader`; with gates at 1 it computes the same function as the
child running that arc.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from acme_flwr.device.cell import (
    OPS,
    ChildConfig,
    arc_to_str,
    has_separable_op,
    validate_arc,
)
from acme_flwr.device.searched_header import SearchedHeader

from .child import ENASChild, SharedCellLayer

__all__ = ["export_header"]

log = logging.getLogger(__name__)


def _copy_into(dst: nn.Module, src_state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``src_state`` into ``dst``; only gate parameters and BN running stats may be missing."""
    result = dst.load_state_dict(dict(src_state), strict=False)
    allowed = ("gate_", "running_mean", "running_var", "num_batches_tracked")
    missing = [k for k in result.missing_keys if not any(a in k for a in allowed)]
    if missing or result.unexpected_keys:
        raise ValueError(f"cannot copy {what}: missing {missing}, unexpected {result.unexpected_keys}")


def export_header(arc: Sequence[int], child_or_state: ENASChild | Mapping[str, torch.Tensor], *, gated: bool = True,
                  bn_running_stats: bool = False, pw_gate_after_bn: bool = False,
                  dropout: float | None = None) -> SearchedHeader:
    """Build a :class:`SearchedHeader` for ``arc`` with weights copied from a shared child (module or state dict).

    ``bn_running_stats=False`` (default) keeps the child's batch-statistics BNs inside the cells, so outputs equal the
    child's; ``True`` gives cell BNs running statistics for per-sample inference (they must then be fine-tuned).
    ``pw_gate_after_bn``: see :class:`~acme_flwr.edge.nas.child.SepConv`. ``dropout`` defaults to the child's.
    Logs a warning if the arc has no separable op (the header then has no gates for Part III to prune).
    """
    if isinstance(child_or_state, ENASChild):
        config, state = child_or_state.config, child_or_state.state_dict()
    else:
        state = dict(child_or_state)
        config = ChildConfig.from_state_dict(state, dropout=0.1 if dropout is None else dropout)
    arc = validate_arc(arc, config.num_cells)
    header = SearchedHeader(arc, config.in_channels, config.num_classes, config.channels, config.num_layers,
                            config.dropout if dropout is None else dropout, gated, bn_running_stats, pw_gate_after_bn)
    if gated and not has_separable_op(arc):
        log.warning("exported header for arc %s has no separable op, hence no gates to prune", arc_to_str(arc))
    header = header.to(device=state["stem.0.weight"].device, dtype=state["stem.0.weight"].dtype)

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    with torch.no_grad():
        _copy_into(header.stem, sub("stem."), "stem")
        _copy_into(header.classifier, sub("classifier."), "classifier")
        for li, layer in enumerate(header.layers):
            prefix = f"layers.{li}."
            for i, node in enumerate(layer.nodes):
                for branch, (inp, op) in enumerate(((node.x_id, node.x_op), (node.y_id, node.y_op))):
                    if OPS[op].weighted:
                        key = f"{prefix}branch_ops.{SharedCellLayer.key(i, branch, inp, op)}."
                        _copy_into(layer.branches[2 * i + branch], sub(key), f"layer {li} node {i} branch {branch}")
            rows = state[prefix + "final_conv"]
            layer.final_conv.copy_(torch.cat([rows[k] for k in layer.loose], dim=1)[:, :, None, None])
            _copy_into(layer.bn, sub(prefix + "bn."), f"layer {li} bn")
    return header
