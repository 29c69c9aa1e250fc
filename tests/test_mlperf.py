"""engine/mlperf.py: the reference's epoch schedule, and an MLPerf run on the sample that the
mlperf-logging compliance checker accepts (train_ssd.py --mlperf, ssd300_resnet34 at width 1/8)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from engine import mlperf, training
from model import presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# configs/mlperf_ssd_resnet34_1x8.flags as train_ssd.py reads it (80 epochs here).
REFERENCE_FLAGS = dict(batch_size=1024, train_images=117266, epochs=80, warmup_epochs=2.619685, warmup_factor=0,
                       decay_epochs=["40", "50"], eval_interval=5, eval_epochs=[], base_lr_per_32=2.5e-3,
                       target_map=0.23, target_metric="coco", submission_division="auto", weight_decay=5e-4,
                       augmentation="mlperf", weight_decay_on="all", optimizer="sgd", momentum=0.9,
                       exclude_difficult=False, anchor_config=None,
                       annotations_file="annotations/instances_val2017.json")


def _session(tmp_path, sample_records, **overrides):
    values = dict(REFERENCE_FLAGS, submission_org="test", submission_platform="", seed=0, max_steps=0,
                  eval_every_steps=100)
    values.update(overrides)
    flag_values = types.SimpleNamespace(**values)
    config = presets.get("ssd300_resnet34", 80)
    return mlperf.Session(flag_values, config, sample_records, str(tmp_path), num_replicas=8), flag_values


def test_reference_1x8_schedule(tmp_path, sample_records):
    session, flag_values = _session(tmp_path, sample_records)
    plan = session.plan
    # config_DGX1_singlenode.sh: 8 GPUs x 128; lr 2.5e-3 * 1024 / 32; 117,266 non-empty COCO train images.
    assert plan.steps_per_epoch == 115                          # ceil(117266 / 1024) = ceil(114.52)
    assert plan.warmup_steps == 299                             # int(2.619685 * 117266 / 1024) = int(299.99998)
    assert plan.max_steps == 80 * 115 == 9200 and plan.eval_every_steps == 0
    assert plan.learning_rate == pytest.approx(0.08) and plan.decay_boundaries == (4600, 5750)
    assert plan.eval_epochs == tuple(range(5, 81, 5)) and plan.train_images == 117266   # every 5 epochs
    # The plan is returned, never written into the flags train_ssd.py reads.
    assert flag_values.max_steps == 0 and flag_values.eval_every_steps == 100
    assert session.problems == [] and session.closed is None and session.eval_images is None   # not yet read
    lr = training.make_schedule(plan)
    # MLPerf warm-up with factor 0: lr(k) = 0.08 * k / 299 for k < 299; x0.1 at epochs 40 and 50.
    expected = {0: 0.0, 150: 0.08 * 150 / 299, 299: 0.08, 4599: 0.08, 4600: 0.008, 5749: 0.008, 5750: 0.0008}
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, rel=1e-6), step


def test_plan_drops_eval_epochs_past_the_last_and_is_frozen():
    flag_values = types.SimpleNamespace(epochs=3, warmup_epochs=0.0, warmup_factor=1, decay_epochs=["2"],
                                        eval_interval=0, eval_epochs=["3", "1", "5"], base_lr_per_32=1e-3)
    plan = mlperf.make_plan(flag_values, global_batch=4, train_images=10)
    # ceil(10 / 4) = 3 steps an epoch, 3 epochs; decay at the start of epoch 2 (step 6); epoch 5 > 3 dropped.
    assert (plan.steps_per_epoch, plan.max_steps, plan.decay_boundaries) == (3, 9, (6,))
    assert plan.eval_epochs == (1, 3) and plan.decay_factors == (1.0, 0.1)
    assert plan.warmup_steps == 1 and plan.warmup_start == 0.5   # at least one step; 1 - 2^-1
    assert plan.learning_rate == pytest.approx(1e-3 * 4 / 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.max_steps = 1


def test_closed_tensor_names_are_the_rule_set_s(sample_records):
    from mlperf_logging import compliance_checker
    from nets import ssd
    rules = os.path.join(os.path.dirname(compliance_checker.__file__), "training_1.1.0", "closed_ssd.yaml")
    with open(rules) as f:
        required = re.findall(r'"(ssd0_\w+)"', f.read())
    config = presets.get("ssd300_resnet34", 80, width_multiplier=0.125)
    names = mlperf.closed_tensor_names(ssd.build(config), config)
    assert len(required) == 119 and sorted(names) == sorted(required)
    assert names[:4] == ["ssd0_resnetmlperf0_conv0_weight", "ssd0_resnetmlperf0_batchnorm0_gamma",
                         "ssd0_resnetmlperf0_batchnorm0_beta", "ssd0_resnetmlperf0_stage1_conv0_weight"]


def _records(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith(":::MLLOG "):
                rows.append(json.loads(line[len(":::MLLOG "):]))
    return rows


@pytest.mark.slow
def test_mlperf_run_on_the_sample_passes_the_compliance_checker(sample_records, tmp_path):
    model_dir = str(tmp_path / "run")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    # 8 images per epoch at batch 4: 2 steps an epoch; evaluations after epochs 1 and 2 of 3; a target of
    # 0 is reached at the first one, so the run stops there with status success after 2 steps.
    cmd = [sys.executable, os.path.join(REPO, "train_ssd.py"), "--data_dir", sample_records,
           "--model_dir", model_dir, "--model", "ssd300_resnet34", "--width_multiplier", "0.125",
           "--batch_size", "4", "--image_summary_steps", "0", "--log_every_n_steps", "1", "--mlperf",
           "--epochs", "3", "--train_images", "8", "--eval_epochs", "1,2", "--target_map", "0",
           "--decay_epochs", "40,50", "--submission_division", "open"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"step \d+/\d+ .*total_loss=(\S+)", result.stderr)]
    assert len(losses) == 2 and all(np.isfinite(losses))       # the preset trains ...
    assert re.search(r"step 2 eval: voc07 mAP [0-9.]+, voc12 mAP [0-9.]+, COCO AP [0-9.]+ \(80 images\)",
                     result.stderr)                             # ... and evaluates on the sample
    assert re.search(r"MLPerf: reached coco 0\.0000: time to accuracy [0-9.]+ minutes", result.stderr)
    log = os.path.join(model_dir, mlperf.LOG_FILENAME)
    records = _records(log)
    keys = [r["key"] for r in records]
    assert keys.count("eval_accuracy") == 1 and keys[-1] == "run_stop"
    assert records[-1]["metadata"]["status"] == "success"
    assert {"run_start", "epoch_start", "epoch_stop", "tracked_stats"} <= set(keys)
    # The preset's MLPerf recipe without the flags: the reference's crop (max_samples 1), open division
    # (width 1/8, the sample's counts), the clock started before the records were counted.
    assert [r["value"] for r in records if r["key"] == "max_samples"] == [1]
    assert [r["value"] for r in records if r["key"] == "submission_division"] == ["open"]
    assert keys.index("run_start") < keys.index("eval_samples")
    assert re.search(r"logging the open division \(asked for\); not closed anyway: the model is not the "
                     r"full-width ssd300_resnet34 preset for 80 classes \(differs in num_classes, width_multiplier\)",
                     result.stderr)
    assert os.path.exists(os.path.join(model_dir, "ckpt-2.index"))
    checker = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                              "--ruleset", mlperf.RULESET, log], cwd=str(tmp_path), capture_output=True,
                             text=True, timeout=120)
    output = checker.stdout + checker.stderr
    assert checker.returncode == 0 and "SUCCESS" in output, output


def test_eval_epochs_every_interval_plus_extras():
    flag_values = types.SimpleNamespace(epochs=70, eval_interval=5, eval_epochs=["42"])
    assert mlperf.eval_epochs(flag_values) == (5, 10, 15, 20, 25, 30, 35, 40, 42, 45, 50, 55, 60, 65, 70)
    flag_values.eval_interval, flag_values.eval_epochs = 0, ["80", "3"]
    assert mlperf.eval_epochs(flag_values) == (3,)


def _problems(config=None, **overrides):
    flag_values = types.SimpleNamespace(**dict(REFERENCE_FLAGS, **overrides))
    config = config or presets.get("ssd300_resnet34", 80)
    return mlperf.closed_problems(flag_values, config, flag_values.augmentation, flag_values.weight_decay_on)


def test_closed_only_for_the_reference_method():
    assert _problems() == []
    # Free under the closed rules: batch, lr, warm-up, weight decay value, decay epochs scaled by 1 + k/10.
    assert _problems(batch_size=256, base_lr_per_32=3e-3, warmup_epochs=1.0, weight_decay=1e-4,
                     decay_epochs=["44", "55"]) == []
    cases = {"the model is not the full-width ssd300_resnet34": (presets.get("ssd300_resnet34", 80, width_multiplier=0.5), {}),
             "--augmentation=caffe": (None, {"augmentation": "caffe"}),
             "--weight_decay_on=kernels": (None, {"weight_decay_on": "kernels"}),
             "--momentum=0.95": (None, {"momentum": 0.95}),
             "--eval_interval=10": (None, {"eval_interval": 10}),
             "--eval_epochs=42 adds": (None, {"eval_epochs": ["42"]}),
             "--decay_epochs=40,55": (None, {"decay_epochs": ["40", "55"]}),
             "--train_images=0 reads the train records before run_start": (None, {"train_images": 0}),
             "--train_images=118287": (None, {"train_images": 118287}),
             "no --annotations_file": (None, {"annotations_file": ""})}
    for phrase, (config, overrides) in cases.items():
        problems = _problems(config, **overrides)
        assert len(problems) == 1 and problems[0].startswith(phrase), (phrase, problems)
    caffe_matcher = presets.get("ssd300_resnet34", 80, matching="caffe_bipartite", nms_iou_threshold=0.45)
    assert "(differs in matching, nms_iou_threshold)" in _problems(caffe_matcher)[0]


def test_the_reference_recipe_unless_flags_are_given():
    class Flag:
        def __init__(self, value, present):
            self.value, self.present = value, present

    class Flags(types.SimpleNamespace):
        def __getitem__(self, name):
            return Flag(getattr(self, name), name in self.given)

    flag_values = Flags(augmentation="caffe", weight_decay_on="kernels", given=())
    assert mlperf.recipe(flag_values, presets.get("ssd300_resnet34", 80)) == ("mlperf", "all")
    assert mlperf.recipe(flag_values, presets.get("ssd300_vgg16_coco", 80)) == ("caffe", "kernels")
    flag_values.given = ("augmentation",)
    assert mlperf.recipe(flag_values, presets.get("ssd300_resnet34", 80)) == ("caffe", "all")


def test_counts_after_run_start_decide_the_division(tmp_path, sample_records):
    from nets import ssd
    session, _ = _session(tmp_path, sample_records, train_images=8)
    config = presets.get("ssd300_resnet34", 80, width_multiplier=0.125)
    session.run_start(ssd.build(config))
    # The sample: 8 images per epoch asked, 250 train and 80 val records: open, each reason named.
    assert not session.closed and session.eval_images == 80
    assert any(p.startswith("the train records hold 250 images, an epoch 8") for p in session.problems)
    assert any(p.startswith("the val records hold 80 images") for p in session.problems)
    keys = [r["key"] for r in _records(os.path.join(str(tmp_path), mlperf.LOG_FILENAME))]
    assert keys.index("run_start") < keys.index("train_samples") and "weights_initialization" not in keys
    division = [r["value"] for r in _records(os.path.join(str(tmp_path), mlperf.LOG_FILENAME))
                if r["key"] == "submission_division"]
    assert division == ["open"]


def test_batch_norm_statistics_are_averaged_over_replicas():
    import keras
    import tensorflow as tf
    # Reduced through one device, not collective ops: a second two-CPU strategy in the same pytest process
    # (tests/test_training.py) would reuse these collectives' instance keys and fail on shape mismatch.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.5)])
    # Replica 0 sees zeros, replica 1 fours: moving means 0.5 * 0 + 0.5 * mean = 0 and 2.
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(tf.constant([[0.0] * 3] * 2 + [[4.0] * 3] * 2)).batch(4))
    step = tf.function(lambda x: strategy.run(lambda x: model(x, training=True), args=(x,)))
    for batch in batches:
        step(batch)
    moving_mean = training.batch_norm_statistics(model)[0]
    assert [float(v.numpy()[0]) for v in moving_mean.value.values] == [0.0, 2.0]
    training.average_batch_norm_statistics(model, strategy)
    assert [float(v.numpy()[0]) for v in moving_mean.value.values] == [1.0, 1.0]
    assert len(training.batch_norm_statistics(model)) == 2   # moving mean and variance


def test_the_1x8_flagfile_is_the_reference_method():
    with open(os.path.join(REPO, "configs", "mlperf_ssd_resnet34_1x8.flags")) as f:
        values = dict(line.strip()[2:].split("=", 1) for line in f if line.startswith("--") and "=" in line)
    flag_values = types.SimpleNamespace(**dict(
        REFERENCE_FLAGS, augmentation=values["augmentation"], weight_decay_on=values["weight_decay_on"],
        optimizer=values["optimizer"], momentum=float(values["momentum"]), target_map=float(values["target_map"]),
        eval_interval=int(values["eval_interval"]), decay_epochs=values["decay_epochs"].split(","),
        train_images=int(values["train_images"]), annotations_file=values["annotations_file"]))
    assert values["model"] == "ssd300_resnet34" and "eval_epochs" not in values
    assert mlperf.closed_problems(flag_values, presets.get("ssd300_resnet34", 80), flag_values.augmentation,
                                  flag_values.weight_decay_on) == []


@pytest.mark.slow
def test_a_closed_log_passes_the_closed_checker(tmp_path, sample_records, monkeypatch):
    """The reference's method with record counts equal to the reference's (here the sample's 250 / 80,
    patched in as the reference counts): closed, and the v1.1 closed checker accepts the log."""
    from nets import ssd
    monkeypatch.setattr(mlperf, "REFERENCE_TRAIN_IMAGES", 250)
    monkeypatch.setattr(mlperf, "REFERENCE_EVAL_IMAGES", 80)
    session, _ = _session(tmp_path, sample_records, train_images=250, epochs=10)
    session.run_start(ssd.build(presets.get("ssd300_resnet34", 80)))
    assert session.closed and session.problems == []
    # 250 images at batch 1024: one step an epoch; evaluations after epochs 5 and 10, the second reaching 0.23.
    accuracies = iter([0.2, 0.25])
    stops = [session.after_step(step, lambda: {"coco": {"AP": next(accuracies)}}) for step in range(1, 11)]
    assert stops == [False] * 9 + [True]
    log = os.path.join(str(tmp_path), mlperf.LOG_FILENAME)
    records = _records(log)
    assert [r["value"] for r in records if r["key"] == "submission_division"] == ["closed"]
    assert [r["metadata"]["epoch_num"] for r in records if r["key"] == "eval_accuracy"] == [5, 10]
    assert [r["value"] for r in records if r["key"] == "max_samples"] == [1]
    checker = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
                              "--ruleset", mlperf.RULESET, log], cwd=str(tmp_path), capture_output=True,
                             text=True, timeout=120)
    output = checker.stdout + checker.stderr
    assert checker.returncode == 0 and "SUCCESS" in output, output
