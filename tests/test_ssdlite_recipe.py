"""torchvision's SSDLite recipe: the cosine-per-epoch schedule with warm-up, the flagfile, a tiny run.

References: pytorch/vision references/detection/train.py (CosineAnnealingLR(T_max=epochs), stepped per
epoch), engine.py train_one_epoch (LinearLR from 1/1000 over min(1000, len(data_loader) - 1)
iterations in epoch 0), README.md's ssdlite320_mobilenet_v3_large command.
"""

import math
import os
import re
import subprocess
import sys

import pytest

from engine import train_config, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILE = os.path.join(REPO, "configs", "ssdlite320_mobilenet_v3_large.flags")


def test_cosine_per_epoch_schedule_by_hand():
    # The COCO recipe: 0.15, 610 steps per epoch, 660 epochs; warm-up min(1000, 609) = 609 steps.
    schedule = training.WarmupCosinePerEpochSchedule(0.15, 660 * 610, 610, warmup_steps=1000, warmup_start=0.001)
    lr = lambda step: float(schedule(step))
    assert lr(0) == pytest.approx(0.15 * 0.001)
    assert lr(203) == pytest.approx(0.15 * (0.001 + 0.999 * 203 / 609))
    assert lr(609) == pytest.approx(0.15) and lr(609) == lr(300 + 309)
    # Epoch 1 starts the cosine, constant within the epoch.
    assert lr(610) == pytest.approx(0.15 * (1 + math.cos(math.pi / 660)) / 2) == lr(1219)
    assert lr(330 * 610) == pytest.approx(0.075)
    assert lr(660 * 610 - 1) == pytest.approx(0.15 * (1 + math.cos(math.pi * 659 / 660)) / 2, rel=1e-4)
    # A short epoch caps the warm-up at its length - 1, as torchvision's min(1000, len - 1) does.
    short = training.WarmupCosinePerEpochSchedule(1.0, 20, 5, warmup_steps=1000, warmup_start=0.0)
    assert [float(short(s)) for s in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert float(short(5)) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        training.WarmupCosinePerEpochSchedule(1.0, 20, 0)


def test_make_schedule_picks_the_plan_s_kind():
    plan = train_config.Plan(max_steps=100, learning_rate=0.2, decay_boundaries=(), decay_factors=(1.0,),
                             warmup_steps=0, schedule=train_config.COSINE_PER_EPOCH, steps_per_epoch=10)
    schedule = training.make_schedule(plan)
    assert isinstance(schedule, training.WarmupCosinePerEpochSchedule)
    assert float(schedule(50)) == pytest.approx(0.1)
    assert isinstance(training.make_schedule(train_config.Plan(100, 0.2, (), (1.0,), 0)),
                      training.WarmupPiecewiseSchedule)


def _flagfile_values():
    values = {}
    for line in open(FLAGFILE):
        if line.startswith("--"):
            name, _, value = line.strip()[2:].partition("=")
            values[name] = value
    return values


def test_flagfile_is_torchvision_s_recipe():
    values = _flagfile_values()
    assert values["model"] == "ssdlite320_mobilenet_v3_large" and values["augmentation"] == "ssdlite"
    assert (values["optimizer"], float(values["momentum"]), float(values["learning_rate"])) == ("sgd", 0.9, 0.15)
    assert int(values["batch_size"]) == 8 * 24
    assert (float(values["weight_decay"]), values["weight_decay_on"]) == (4e-5, "all")
    assert values["lr_schedule"] == "cosine_per_epoch"
    # 660 epochs of 610 steps: 117,266 COCO train images over 8 x 24 with drop_last.
    assert int(values["steps_per_epoch"]) == (117_266 // 8) // 24 == 610
    assert int(values["max_steps"]) == 660 * 610
    assert (int(values["warmup_steps"]), float(values["warmup_start"])) == (1000, 0.001)
    assert values["checkpoint_path"] == ""   # from scratch


@pytest.mark.slow
def test_the_recipe_trains_the_sample(sample_records, tmp_path):
    """The flagfile as it is, with the sample's data, a narrow net and a tiny batch (rate scaled linearly)."""
    cmd = [sys.executable, os.path.join(REPO, "train_ssd.py"), f"--flagfile={FLAGFILE}",
           "--data_dir", sample_records, "--model_dir", str(tmp_path / "run"), "--width_multiplier", "0.125",
           "--batch_size", "4", "--learning_rate", str(0.15 * 4 / 192), "--steps_per_epoch", "3",
           "--max_steps", "6", "--log_every_n_steps", "1", "--image_summary_steps", "0",
           "--save_checkpoints_steps", "6", "--eval_every_steps", "0"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rates = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"step (\d+)/6 .* lr=(\S+)", result.stderr)}
    losses = [float(v) for v in re.findall(r"step \d+/6 .*total_loss=(\S+)", result.stderr)]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    # Epoch 1 (steps 3-5) runs at (1 + cos(pi / 2)) / 2 = half the base rate.
    assert rates[4] == pytest.approx(0.15 * 4 / 192 / 2, rel=1e-4)
    assert os.path.exists(tmp_path / "run" / "ckpt-6.index")


def test_no_backbone_warnings_are_preset_aware(tmp_path, caplog):
    """SSDLite trains from scratch with SGD by its recipe: no VGG16 advice and no divergence warning;
    SSD300 still gets both."""
    import logging
    import types

    missing = str(tmp_path / "no_backbone")
    with caplog.at_level(logging.INFO, logger="absl"):
        assert training.init_backbone(types.SimpleNamespace(name="ssdlite320_mobilenet_v3_large"), missing, False, "sgd") == 0
    assert "from scratch, as its recipe does" in caplog.text
    assert "VGG16" not in caplog.text and "diverges" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(FileNotFoundError, match="mobilenet_v3_large"):
        training.init_backbone(types.SimpleNamespace(name="ssdlite320_mobilenet_v3_large"), missing, True, "sgd")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        training.init_backbone(types.SimpleNamespace(name="ssd300_vgg16"), missing, False, "sgd")
    assert "reduced-fc VGG16" in caplog.text and "diverges" in caplog.text
