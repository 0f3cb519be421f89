"""FedRep on the device: ``head-epochs`` on the classifier with the body frozen, then ``body-epochs`` on the body."""

from __future__ import annotations

from acme_flwr.device.headers import Header, split_header_params

from .base import LocalRound, Phases, TrainMode, register_mode


@register_mode("fedrep")
class FedRepMode(TrainMode):
    name = "fedrep"

    def phases(self, header: Header, r: LocalRound) -> Phases:
        body, head = split_header_params(header)
        return [(head, int(r.cfg.get("head-epochs", 10))), (body, int(r.cfg.get("body-epochs", 1)))]
