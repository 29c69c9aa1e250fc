"""docs/your_own_data.md walked on the sample, as a user runs it: convert (the YOLO layout) -> dataset
doctor -> fine-tune from a detector -> evaluate -> export. The detector is a tiny model of this project
on three classes, two of them the sample's, written here as train_ssd.py leaves a model_dir
(torchvision's 136 MB file is not here; tests/test_torchvision_import.py loads its layout)."""

import glob
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from engine import checkpoints
from model import presets
from nets import ssd

pytestmark = pytest.mark.slow   # starts the scripts and trains

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width_multiplier", "0.125", "--batch_size", "2", "--optimizer", "adam", "--warmup_steps", "0",
        "--image_summary_steps", "0", "--log_every_n_steps", "1"]


def _start(script, *flags):
    return script, subprocess.Popen([sys.executable, os.path.join(REPO, script), *flags], cwd=REPO, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def _wait(started):
    script, process = started
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, f"{script}: {stderr[-3000:]}"
    return stdout + stderr


def _run(script, *flags):
    return _wait(_start(script, *flags))


def _detector(model_dir, class_names):
    config = presets.get("ssd300_vgg16", len(class_names), width_multiplier=0.125)
    checkpoints.write(model_dir, config, class_names)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=ssd.build(config)), model_dir, 1).save(checkpoint_number=5)


def test_the_walk_through(tmp_path):
    records, base, mine = str(tmp_path / "records"), str(tmp_path / "base"), str(tmp_path / "mine")
    # 1. convert: the sample's YOLO layout is the converter's default data.yaml
    output = _run("convert_yolo_tfrecords.py", "--output_directory", records)
    assert "train: 250 images, 824 objects" in output and "val: 80 images, 270 objects" in output
    # 2. the dataset doctor on the records, beside 3. fine-tuning from a detector of other classes (the
    # two do not depend on each other: run together, they share the two cores of CI)
    doctor = _start("analyze_dataset.py", "--data_dir", records, "--split", "train", "--output_dir", "")
    _detector(base, ("Square", "dog", "circle"))
    output = _run("train_ssd.py", "--data_dir", records, "--model_dir", mine, "--max_steps", "2",
                  "--fine_tune_checkpoint", base, *TINY)
    assert "250 images" in _wait(doctor)
    assert (f"fine-tuning from {base}/ckpt-5: 71 weights loaded; classes carried over: 2 of 8 (circle, square); "
            "new, initialised: cross, ellipse, hexagon, ring, star, triangle") in output
    assert "step 1/2" in output and "step 2/2" in output             # a new run: step 0, then 1 and 2
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(mine, "ckpt-*.index"))) == [
        "ckpt-0.index", "ckpt-2.index"]
    # 4. evaluate, beside 5. export
    export = _start("export_saved_model.py", "--model_dir", mine, "--output_dir", str(tmp_path / "exported"))
    assert "voc07 mAP" in _run("eval_ssd.py", "--model_dir", mine, "--data_dir", records, "--metrics", "voc07")
    _wait(export)
    assert os.path.isfile(str(tmp_path / "exported" / "saved_model.pb"))
