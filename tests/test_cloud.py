"""Cloud stages: importance, distillation, sub-net table, the cached pipeline, bad config."""

from __future__ import annotations

import logging

import pytest
import torch

from acme_flwr.cloud.models import create_model
from acme_flwr.cloud.stages import (
    CloudStageConfig,
    build_elastic_backbone,
    cache_meta,
    finetune_teacher,
    head_neuron_importance,
    load_backbone,
    save_backbone,
    subnet_accuracy_table,
    train_width_depth_stage,
    train_width_stage,
)


def synthetic(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-conditional 8x8 images: a fixed template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % 10
    return templates[y] + 0.1 * torch.randn(n, 1, 8, 8, generator=g), y


def micro(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_micro_test")


def small_cfg(**kw) -> CloudStageConfig:
    base = {"teacher_epochs": 2, "width_epochs": 1, "depth_epochs": 1, "lr": 1e-3, "teacher_lr": 1e-3,
            "batch_size": 16, "widths": [1.0, 0.5], "depths": [1.0, 0.5], "max_steps": 4}
    return CloudStageConfig(**{**base, **kw})


def test_importance_shapes_and_reorder_preserves_outputs() -> None:
    model = micro()
    x, y = synthetic(32)
    heads, neurons = head_neuron_importance(model, x, y, batch_size=8)
    assert [h.shape for h in heads] == [(4,), (4,)] and [n.shape for n in neurons] == [(64,), (64,)]
    assert all((h >= 0).all() and h.sum() > 0 for h in heads)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no .grad left behind
    with torch.no_grad():
        before = model(x)
        model.reorder(heads, neurons)
        assert (model(x) - before).abs().max().item() <= 1e-5
    first_layer = head_neuron_importance(model, x, y, 8)[0][0]  # after re-ordering: descending importance
    assert torch.all(first_layer[:-1] >= first_layer[1:] - 1e-6)


def trained_teacher(x: torch.Tensor, y: torch.Tensor):
    """A confident teacher (fine-tuned for 30 steps) so distillation has something to transfer."""
    teacher = micro(0)
    cfg = small_cfg(teacher_epochs=100, teacher_lr=3e-3, batch_size=32, max_steps=30)
    log = finetune_teacher(teacher, (x, y), cfg, progress=False)
    assert log["loss"][-1] < 0.5 * log["loss"][0]
    return teacher.eval()


def test_width_distillation_loss_decreases() -> None:
    x, y = synthetic(32)
    teacher = trained_teacher(x, y)
    cfg = small_cfg(width_epochs=100, lr=3e-3, batch_size=32, max_steps=15)
    log = train_width_stage(micro(1), teacher, (x, y), cfg, progress=False)
    assert log["steps"] == 15
    # soft-CE includes the teacher's entropy (irreducible), so require an absolute drop
    assert log["loss"][-1] < log["loss"][0] - 0.3, log["loss"]
    assert sum(log["loss"][-3:]) < sum(log["loss"][:3])


def test_depth_stage_distillation_loss_decreases_and_faithful_uses_ce() -> None:
    x, y = synthetic(32)
    teacher = trained_teacher(x, y)
    cfg = small_cfg(depth_epochs=100, lr=3e-3, batch_size=32, max_steps=10)
    log = train_width_depth_stage(micro(1), teacher, (x, y), cfg, progress=False)
    assert log["loss"][-1] < log["loss"][0] - 0.5, log["loss"]
    ce = train_width_depth_stage(micro(), None, (x, y), small_cfg(max_steps=1), progress=False)
    assert ce["loss"][0] == pytest.approx(4 * torch.log(torch.tensor(10.0)).item(), rel=0.1)  # 4 sub-nets x ln 10


def test_accuracy_table_order_and_values() -> None:
    model = micro()
    x, y = synthetic(20)
    table = subnet_accuracy_table(model, x, y, [0.5, 1.0, 0.25], [0.5, 1.0])
    assert [(d, w) for d, w, _ in table] == [(1.0, 1.0), (1.0, 0.5), (1.0, 0.25), (0.5, 1.0), (0.5, 0.5), (0.5, 0.25)]
    with torch.no_grad():
        acc = (model(x, width=0.5, depth=0.5).argmax(-1) == y).float().mean().item()
    assert table[4][2] == pytest.approx(acc)


def test_build_caches_and_reuses(tmp_path, caplog) -> None:
    train, val = synthetic(48, 0), synthetic(20, 1)
    cfg = small_cfg()
    model, table, log = build_elastic_backbone(micro(), train, val, cfg, cache_dir=tmp_path, progress=False)
    assert set(log) == {"teacher", "width", "depth"} and "importance" in log["width"]
    assert len(table) == 4 and all(0.0 <= a <= 1.0 for *_, a in table)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    with caplog.at_level(logging.INFO, logger="acme_flwr.cloud.stages"):
        again, table2, _ = build_elastic_backbone(micro(), train, val, cfg, cache_dir=tmp_path, progress=False)
    assert "cache hit" in caplog.text
    assert table2 == table
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # a different config is a different cache entry
    build_elastic_backbone(micro(), train, val, small_cfg(stages=["width"]), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_checkpoint_from_another_config_is_refused(tmp_path) -> None:
    train, val = synthetic(16, 0), synthetic(8, 1)
    model = micro()
    meta = cache_meta(model, train, val, small_cfg())
    save_backbone(tmp_path / "b.pt", model, [(1.0, 1.0, 0.5)], {}, meta)
    loaded, table, _ = load_backbone(tmp_path / "b.pt", meta)
    assert table == [(1.0, 1.0, 0.5)] and loaded.arch() == model.arch()
    other = cache_meta(model, train, val, small_cfg(lr=0.5))
    with pytest.raises(ValueError, match=r"another configuration.*cfg\.lr"):
        load_backbone(tmp_path / "b.pt", other)
    with pytest.raises(FileNotFoundError, match="no elastic backbone checkpoint"):
        load_backbone(tmp_path / "missing.pt")


def test_faithful_skips_teacher_and_reordering() -> None:
    train, val = synthetic(32, 0), synthetic(10, 1)
    cfg = small_cfg(stages=["width"], faithful=True, max_steps=1)
    assert not cfg.use_teacher and not cfg.use_reorder
    _, _, log = build_elastic_backbone(micro(), train, val, cfg, progress=False)
    assert "importance" not in log["width"]
    assert log["width"]["loss"][0] == pytest.approx(2 * torch.log(torch.tensor(10.0)).item(), rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": [0.5, 1.5]}, r"widths=.*\(0, 1\]"),
        ({"depths": [0.0]}, r"depths=.*\(0, 1\]"),
        ({"widths": []}, "widths="),
        ({"stages": ["depth", "width"]}, "ordered subset"),
        ({"stages": ["nas"]}, "ordered subset"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CloudStageConfig(**kwargs)


def test_width_with_zero_heads_is_reported_before_training() -> None:
    cfg = small_cfg(widths=[1.0, 0.1], stages=["width"])
    with pytest.raises(ValueError, match="0 attention heads"):
        build_elastic_backbone(micro(), synthetic(16), synthetic(8, 1), cfg, progress=False)


def test_experiment_entry_points_smoke(tmp_path, capsys) -> None:
    from experiments import bench_subnets
    from experiments import cloud as cloud_exp

    result = cloud_exp.main(["--model", "vit_micro_test", "--max-steps", "1", "--widths", "1.0,0.5", "--depths",
                             "1.0,0.5", "--no-progress", "--out", str(tmp_path / "r.json")])
    assert len(result["table"]) == 4 and (tmp_path / "r.json").is_file()
    surfaces = cloud_exp.main(["--model", "vit_micro_test", "--max-steps", "1", "--widths", "1.0,0.5", "--depths",
                               "1.0,0.5", "--no-progress", "--compare-distillation"])["surfaces"]
    assert set(surfaces) == {"teacher", "distill:width", "distill:depth", "no-teacher:width", "no-teacher:depth"}
    rows = bench_subnets.main(["--model", "vit_micro_test", "--batch-size", "4", "--repeats", "1", "--widths",
                               "1.0,0.5", "--depths", "1.0,0.5"])
    assert [r["params_ratio"] for r in rows][0] == 1.0 and all(r["bytes_ratio"] <= 1.0 for r in rows)
    assert "time_per_mac" in capsys.readouterr().out
