"""FedBABU on the device: the body trains, the classifier stays at its initialisation; evaluation fine-tunes a copy
of the classifier on the local training data for ``finetune-epochs`` first (the copy is not kept)."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from acme_flwr.device.headers import Header, split_header_params
from acme_flwr.device.training import TrainHParams, train_header

from .base import LocalRound, Phases, TrainMode, register_mode


@register_mode("fedbabu")
class FedBABUMode(TrainMode):
    name = "fedbabu"

    def phases(self, header: Header, r: LocalRound) -> Phases:
        body, _ = split_header_params(header)
        return [(body, int(r.cfg["local-epochs"]))]

    def evaluated_header(self, header: Header, r: LocalRound) -> Header:
        epochs = int(r.cfg.get("finetune-epochs", 0))
        if epochs <= 0:
            return header
        tuned = copy.deepcopy(header)
        hp = replace(r.hparams(local_epochs=epochs), accumulation=TrainHParams.accumulation)  # not scored
        seed = r.seed(7)
        grids = r.features("train", r.data.train)
        torch.manual_seed(seed)  # dropout: the same draws whether the grids were cached or not
        train_header(None, tuned, r.data.train, hp, seed, grids=grids,
                     phases=[(split_header_params(tuned)[1], epochs)], importance=False)
        return tuned
