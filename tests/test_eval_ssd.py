"""eval_ssd.py end to end: a tiny model trained for 4 steps on the sample, evaluated by the script."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields, label_map, reader
from metrics import result_files

pytestmark = pytest.mark.slow  # starts subprocesses or trains (pytest.ini)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VAL_IMAGES = 80  # dataset/sample: the val split
TINY_TRAINING = ["--width_multiplier", "0.125", "--batch_size", "4", "--max_steps", "4",
                 "--save_checkpoints_steps", "2", "--warmup_steps", "0", "--image_summary_steps", "0"]


def _run(script, *args, timeout=180):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def trained(sample_records, tmp_path_factory):
    """A model_dir with ckpt-2 and ckpt-4 of a 1/8-width SSD300 trained on the sample."""
    model_dir = str(tmp_path_factory.mktemp("tiny_model"))
    done = _run("train_ssd.py", "--data_dir", sample_records, "--model_dir", model_dir, *TINY_TRAINING)
    assert done.returncode == 0, done.stderr[-3000:]
    return sample_records, model_dir


@pytest.fixture(scope="module")
def val_sizes(sample_records):
    """{image id: (height, width)} of the val shards."""
    return {e[fields.IMAGE_ID].numpy().decode(): (int(e[fields.HEIGHT]), int(e[fields.WIDTH]))
            for e in reader.read_split(sample_records, "val")}


def test_eval_latest_checkpoint_json_and_result_files(trained, val_sizes, tmp_path):
    data_dir, model_dir = trained
    output_dir = str(tmp_path / "results")
    done = _run("eval_ssd.py", "--model_dir", model_dir, "--data_dir", data_dir, "--output_dir",
                output_dir, "--nowrite_summaries")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])  # the last stdout line
    assert "mAP" in done.stdout  # the per-class table came first

    class_names = label_map.read_label_map(os.path.join(data_dir, label_map.LABEL_MAP_FILENAME))
    assert results["checkpoint"] == os.path.join(model_dir, "ckpt-4") and results["step"] == 4
    assert results["num_images"] == NUM_VAL_IMAGES == len(val_sizes)
    for metric in ("voc07", "voc12"):
        assert set(results[metric]["AP"]) == set(class_names)
        for value in [results[metric]["mAP"], *results[metric]["AP"].values()]:
            assert value is None or 0.0 <= value <= 1.0
    assert set(results["coco"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
                                    "ARs", "ARm", "ARl"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in results["coco"].values())

    num_lines = 0
    for name in class_names:
        with open(os.path.join(output_dir, result_files.voc_result_filename(name))) as f:
            for line in f:
                image_id, score, xmin, ymin, xmax, ymax = line.split()
                height, width = val_sizes[image_id]
                assert 0.0 <= float(score) <= 1.0
                # 1-based inclusive pixels of the original image: min in [1, size + 1], max in
                # [0, size]; a zero-width normalized box has max = min - 1 (dataset/voc_boxes.py).
                for low, high, size in ((xmin, xmax, width), (ymin, ymax, height)):
                    assert 1.0 <= float(low) <= size + 1 and 0.0 <= float(high) <= size
                    assert float(high) >= float(low) - 1.0
                num_lines += 1
    assert num_lines == results["num_detections"] > 0
    with open(os.path.join(output_dir, result_files.COCO_RESULTS_FILENAME)) as f:
        coco_detections = json.load(f)
    with open(os.path.join(output_dir, result_files.IMAGE_ID_MAP_FILENAME)) as f:
        coco_ids = {v: k for k, v in json.load(f).items()}
    assert len(coco_detections) == num_lines
    for det in coco_detections[::50]:
        height, width = val_sizes[coco_ids[det["image_id"]]]
        x, y, w, h = det["bbox"]
        assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01


def _summaries(event_dir):
    """{tag: {step: value}} of the scalars, and {tag: steps} of the images, in `event_dir`."""
    scalars, images = {}, {}
    for path in tf.io.gfile.glob(os.path.join(event_dir, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.dtype == np.object_:  # image summaries: width, height, encoded PNGs
                    images.setdefault(value.tag, set()).add(event.step)
                else:
                    scalars.setdefault(value.tag, {})[event.step] = float(tensor)
    return scalars, images


def test_wait_for_checkpoints_evaluates_each_then_times_out(trained, tmp_path):
    data_dir, source_dir = trained
    model_dir = str(tmp_path / "model")  # a copy: the summaries written here are this test's own
    tf.io.gfile.makedirs(model_dir)
    for name in tf.io.gfile.listdir(source_dir):
        if not tf.io.gfile.isdir(os.path.join(source_dir, name)):
            tf.io.gfile.copy(os.path.join(source_dir, name), os.path.join(model_dir, name))
    done = _run("eval_ssd.py", "--model_dir", model_dir, "--data_dir", data_dir, "--wait_for_checkpoints",
                "--eval_timeout", "1", "--metrics", "voc07,voc12", "--nowrite_results")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in _json_lines(done.stdout)] == [2, 4]
    assert "no new checkpoint" in done.stderr

    scalars, images = _summaries(os.path.join(model_dir, "eval"))
    assert set(scalars["voc07/mAP"]) == set(scalars["voc12/mAP"]) == {2, 4}
    assert set(scalars["num_images"].values()) == {float(NUM_VAL_IMAGES)}
    assert images == {"eval/detections": {2, 4}}
    assert not any(tag.startswith("coco/") for tag in scalars)


def test_label_map_mismatch_is_a_clear_error(trained, tmp_path):
    _, model_dir = trained
    model_names = label_map.read_label_map(os.path.join(model_dir, label_map.LABEL_MAP_FILENAME))
    label_map.write_label_map(str(tmp_path / label_map.LABEL_MAP_FILENAME), model_names[::-1])
    done = _run("eval_ssd.py", "--model_dir", model_dir, "--data_dir", str(tmp_path))
    assert done.returncode != 0
    assert "label map mismatch" in done.stderr
    assert f"id 1: model {model_names[0]!r} vs data {model_names[-1]!r}" in done.stderr
    assert not _json_lines(done.stdout)
