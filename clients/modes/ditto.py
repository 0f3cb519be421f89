"""Ditto on the device: the received header w trains as in FedAvg and is sent back; a personal header v stays on the
device, trained with ``ditto-lambda``/2 * ||v - w||^2 to the w the round started from, and is the one evaluated."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from acme_flwr import accel
from acme_flwr import protocol as P
from acme_flwr.device.headers import Header, build_header
from acme_flwr.device.training import train_header

from .base import LocalRound, TrainMode, register_mode


@register_mode("ditto")
class DittoMode(TrainMode):
    name = "ditto"

    def train(self, header: Header, r: LocalRound, importance: bool) -> tuple[dict[str, Any], np.ndarray | None]:
        grids = r.features("train", r.data.train)
        seed = r.seed()
        torch.manual_seed(seed)
        reference = {n: p.detach().clone() for n, p in header.named_parameters()}
        personal = copy.deepcopy(header)  # v: kept on the device, or (first round) a copy of w
        if r.state.personal is not None:
            P.load_arrays(personal, r.state.personal)
        hp = r.hparams()
        metrics, scores = train_header(None, header, r.data.train, hp, seed, grids=grids, importance=importance)
        personal_hp = replace(hp, local_epochs=int(r.cfg.get("personal-epochs", 0)) or hp.local_epochs)
        train_header(None, personal, r.data.train, personal_hp, seed + 1, grids=grids, importance=False,
                     proximal=(float(r.cfg.get("ditto-lambda", 0.1)), reference))
        r.state.personal = P.arrays_from_state(personal.state_dict())
        return metrics, scores

    def evaluated_header(self, header: Header, r: LocalRound) -> Header:
        if r.state.personal is None:
            return header
        personal = build_header(json.loads(r.state.header_spec))
        P.load_arrays(personal, r.state.personal)
        return personal.to(accel.device_of(header))
