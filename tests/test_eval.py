"""Device evaluation does not depend on what else is in the test batch (header BatchNorms use running statistics)."""

from __future__ import annotations

import pytest
import torch

from acme_flwr.cloud.models import create_model
from acme_flwr.device.headers import GatedTempCNN
from acme_flwr.device.training import TrainHParams, evaluate_header, train_header
from acme_flwr.task import TensorSplit


def _data(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g))


@pytest.mark.parametrize("running", [True, False])
def test_accuracy_does_not_change_with_the_evaluation_batch_size(running: bool) -> None:
    torch.manual_seed(0)
    backbone = create_model("vit_micro_test", num_labels=5, image_size=16).eval()
    x = _data(4, 0).x
    grid = backbone.forward_features(x).grid
    header = GatedTempCNN(grid.shape[1], 5, channels=8, bn_running_stats=running)
    train_header(backbone, header, _data(64, 1), TrainHParams(batch_size=16, local_epochs=2), seed=0)
    test = _data(45, 2)
    results = {bs: evaluate_header(backbone, header, test, batch_size=bs) for bs in (45, 16, 1 if running else 2)}
    losses = [loss for loss, _ in results.values()]
    if running:  # the fix: per-sample predictions, whatever the batch
        assert max(losses) - min(losses) < 1e-5
        assert len({acc for _, acc in results.values()}) == 1
    else:  # the original's batch statistics: the same samples score differently in other batches
        assert max(losses) - min(losses) > 1e-3
