"""One device setting for every stage (run.device / run.precision): placement rules checked on the CPU, the CUDA path
by a `gpu`-marked test that is skipped where no GPU is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acme_flwr import accel
from acme_flwr.cloud.models import create_model
from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.device.headers import GatedTempCNN
from acme_flwr.device.training import TrainHParams, evaluate_header, train_header
from acme_flwr.task import TensorSplit
from experiments.launch import federation_config


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accel.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        accel.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert accel.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match="only 1 CUDA devices"):
        accel.resolve_device("cuda:3")


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_config_accepts_device_values(value: str) -> None:
    assert AcmeConfig.from_flat({"run.device": value}).run.device == value


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cpu:0", "tpu"])
def test_config_rejects_other_device_values(value: str) -> None:
    with pytest.raises(ConfigError, match="run.device"):
        AcmeConfig.from_flat({"run.device": value})


def test_launcher_asks_ray_for_gpu_shares_only_when_the_run_uses_cuda() -> None:
    cfg = AcmeConfig.from_flat({"topology.num_devices": 4, "run.client_gpus": 0.25})
    assert federation_config(cfg, cuda_available=False) == "num-supernodes=4 client-resources-num-cpus=1"
    assert federation_config(cfg, cuda_available=True).endswith("client-resources-num-gpus=0.25")
    cpu = AcmeConfig.from_flat({"topology.num_devices": 4, "run.device": "cpu"})
    assert "gpus" not in federation_config(cpu, cuda_available=True)


def _device_setup(device: torch.device) -> tuple:
    torch.manual_seed(0)
    backbone = create_model("vit_micro_test", num_labels=5, image_size=16).to(device).eval()
    g = torch.Generator().manual_seed(1)
    train = TensorSplit(torch.randn(48, 1, 16, 16, generator=g), torch.randint(0, 5, (48,), generator=g))
    test = TensorSplit(torch.randn(20, 1, 16, 16, generator=g), torch.randint(0, 5, (20,), generator=g))
    header = GatedTempCNN(32, 5, channels=8)
    return backbone, header, train, test


def test_models_and_batches_agree_on_the_device_and_results_come_back_on_the_cpu() -> None:
    backbone, header, train, test = _device_setup(torch.device("cpu"))
    metrics, importance = train_header(backbone, header, train, TrainHParams(batch_size=16), seed=0,
                                       device=accel.resolve_device("cpu"))
    assert isinstance(importance, np.ndarray) and importance.shape == (header.num_gates,)
    assert accel.device_of(header) == accel.device_of(backbone) == torch.device("cpu")
    loss, acc = evaluate_header(backbone, header, test, device=torch.device("cpu"))
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0


def test_bf16_autocasts_where_supported_and_fp32_does_not() -> None:
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with accel.precision("fp32"), accel.autocast(layer):
        assert layer(x).dtype == torch.float32
    with accel.precision("bf16"), accel.autocast(layer):
        assert layer(x).dtype == torch.bfloat16  # CPU autocast supports bf16
    with pytest.raises(ConfigError, match="run.precision"):
        with accel.precision("fp16"):
            pass


def test_bf16_header_training_runs_and_stays_finite() -> None:
    backbone, header, train, test = _device_setup(torch.device("cpu"))
    with accel.precision("bf16"):
        metrics, importance = train_header(backbone, header, train, TrainHParams(batch_size=16), seed=0)
        loss, _ = evaluate_header(backbone, header, test)
    assert np.isfinite(importance).all() and np.isfinite(loss) and np.isfinite(metrics["loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_metrics_within_float_tolerance() -> None:
    results = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        backbone, header, train, test = _device_setup(device)
        metrics, importance = train_header(backbone, header, train, TrainHParams(batch_size=16), seed=0,
                                           device=device)
        results[name] = (metrics["loss"], importance, evaluate_header(backbone, header, test, device=device))
        assert accel.device_of(header).type == name
    (l_cpu, i_cpu, e_cpu), (l_gpu, i_gpu, e_gpu) = results["cpu"], results["cuda"]
    assert abs(l_cpu - l_gpu) < 1e-4 and abs(e_cpu[0] - e_gpu[0]) < 1e-4
    np.testing.assert_allclose(i_cpu, i_gpu, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize(("overrides", "message"), [
    (["+experiment=paper"], "data.root has no value"),
    (["+experiment=paper", "data.root=/nonexistent/cifar"], "model.pretrained_path has no value"),
    (["+experiment=paper", "data.root=/nonexistent/cifar", "model.pretrained_path=/nonexistent/vit"],
     "is not a save_pretrained directory"),
])
def test_paper_preset_names_missing_data_and_weights_before_starting_anything(tmp_path, overrides, message) -> None:  # noqa: ANN001
    from experiments.launch import prepare

    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        prepare(out, None, overrides)
    assert not out.exists()


def test_paper_dry_is_the_paper_pipeline_at_full_size_without_data_or_weights(tmp_path) -> None:  # noqa: ANN001
    from experiments.launch import prepare
    from experiments.runconfig import compose

    dry, paper = compose(["+experiment=paper_dry"]), compose(["+experiment=paper", "data.root=/d",
                                                              "model.pretrained_path=/m"])
    assert dry.model.name == paper.model.name == "vit_b16" and not dry.model.pretrained_path
    assert dry.model.header_channels == paper.model.header_channels == 256
    assert (dry.partition.kind, dry.partition.category) == (paper.partition.kind, paper.partition.category)
    assert dry.topology == paper.topology
    prepare(tmp_path / "out", None, ["+experiment=paper_dry"])  # nothing local is needed


def test_threads_sets_and_restores_the_intra_op_thread_count() -> None:
    before = torch.get_num_threads()
    with accel.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert accel.cores() >= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_round_of_the_pipeline_on_cuda_gives_the_cpu_metrics(tmp_path) -> None:  # noqa: ANN001
    """Cloud stage → PFG → extraction → one ACME round with run.device=cuda vs cpu (in-process devices, small
    model): the same picks and device metrics within float tolerance."""
    from flwr.app import ArrayRecord

    from acme_flwr.cloud.models import input_shape
    from acme_flwr.packages import build_packages
    from acme_flwr.results import RunRecorder
    from acme_flwr.task import federated_data
    from acme_flwr.topology import Topology
    from clients.client_app import app
    from strategies.registry import build_strategy
    from tests.conftest import SMOKE
    from tests.inprocess import InProcessGrid

    blocks = {}
    for device in ("cpu", "cuda"):
        flat = {**SMOKE, "run.device": device, "strategy.rounds": 1}
        cfg = AcmeConfig.from_flat(flat)
        deployment = build_packages(cfg, federated_data(cfg, *input_shape(cfg)), tmp_path / device, progress=False)
        strategy = build_strategy("acme", cfg, Topology(4, 2, "round_robin", 2), deployment,
                                  RunRecorder(tmp_path / f"run-{device}", cfg.to_dict(), 0))
        strategy.start(grid=InProcessGrid(app, 4, flat), initial_arrays=ArrayRecord(), num_rounds=1)
        blocks[device] = (deployment.picks, strategy.finalize())
    (picks_cpu, cpu), (picks_gpu, gpu) = blocks["cpu"], blocks["cuda"]
    assert {c: (p["grid_width"], p["grid_depth"]) for c, p in picks_cpu.items()} == \
           {c: (p["grid_width"], p["grid_depth"]) for c, p in picks_gpu.items()}
    assert cpu["failures"]["count"] == gpu["failures"]["count"] == 0
    per_cpu, per_gpu = cpu["accuracy"]["personalized"]["per_device"], gpu["accuracy"]["personalized"]["per_device"]
    assert per_cpu.keys() == per_gpu.keys()
    # accuracy on a few test images is discrete: a float difference may flip one prediction of one device
    assert abs(cpu["accuracy"]["personalized"]["mean"] - gpu["accuracy"]["personalized"]["mean"]) <= 0.05
