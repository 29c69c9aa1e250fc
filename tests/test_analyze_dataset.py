"""analyze_dataset.py end to end on a synthetic dataset of tall, thin poles: coverage with the preset's
anchors is low, --fit_anchors raises it, and train_ssd.py trains with the fitted anchors, keeping them in
model_dir/config.json; plus the VOC-source reader, the anchor file and the bad-input paths."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from PIL import Image, ImageDraw

from dataset import annotations, convert
from engine import anchor_file, checkpoints
from model import anchors, presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 120
NUM_IMAGES = 16


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    return env


def _xml(width, height, objects):
    items = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for name, x0, y0, x1, y1 in objects)
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{items}</annotation>").encode()


@pytest.fixture(scope="module")
def poles(tmp_path_factory):
    """A VOC folder of 16 images with 2-4 poles (7:1 upright bars; class 'pole' or 'post') each, one
    box of image 000003 reaching past the border (clipped), and its records."""
    root = tmp_path_factory.mktemp("poles")
    voc_dir = root / "poles"
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        (voc_dir / sub).mkdir(parents=True)
    rng = np.random.default_rng(7)
    for number in range(1, NUM_IMAGES + 1):
        image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        objects = []
        for k in range(int(rng.integers(2, 5))):
            h = int(rng.integers(42, 84))
            w = max(4, round(h / 7))
            x0, y0 = int(rng.integers(1, SIZE - w)), int(rng.integers(1, SIZE - h))
            colour = (230, 200, 40) if k % 2 else (40, 200, 230)
            draw.rectangle([x0 - 1, y0 - 1, x0 + w - 2, y0 + h - 2], fill=colour)   # VOC pixels are 1-based
            objects.append(("pole" if k % 2 == 0 else "post", x0, y0, x0 + w - 1, y0 + h - 1))
        if number == 3:
            objects.append(("pole", 100, 10, SIZE + 5, 90))   # reaches 5 px past the right border
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        (voc_dir / "JPEGImages" / f"{number:06d}.jpg").write_bytes(out.getvalue())
        (voc_dir / "Annotations" / f"{number:06d}.xml").write_bytes(_xml(SIZE, SIZE, objects))
    (voc_dir / "ImageSets" / "Main" / "train.txt").write_text(
        "".join(f"{n:06d}\n" for n in range(1, NUM_IMAGES + 1)))
    records = root / "records"
    convert.convert(str(root), str(records), {"train": [convert.Split.parse("poles:train")]}, {"train": 2},
                    num_threads=1)
    return str(voc_dir), str(records)


def _run(script, *flags, timeout=300):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *flags], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=timeout)
    return result


def test_voc_source_reads_as_its_records(poles):
    voc_dir, records = poles
    from_voc = annotations.from_voc(voc_dir, "train")
    from_records = annotations.from_records(records, "train")
    assert from_voc.class_names == from_records.class_names == ("pole", "post")
    assert from_voc.num_images == from_records.num_images == NUM_IMAGES
    # The converter shuffles images into shards: compare per image id.
    def by_id(t):
        return {t.image_ids[i]: sorted(map(tuple, np.round(t.boxes[t.box_image == i], 5).tolist()))
                for i in range(t.num_images)}
    assert by_id(from_voc) == by_id(from_records)
    assert any("clipped box" in note for image_id, note in from_voc.notes if image_id == "000003")
    images = annotations.load_images(from_records, [0, from_records.num_images - 1])
    assert images[0].shape == (SIZE, SIZE, 3) and images[0].dtype == np.uint8


@pytest.mark.slow
def test_fit_on_poles_then_train_with_the_fitted_anchors(poles, tmp_path):
    _, records = poles
    anchor_path, plots, tb = str(tmp_path / "anchors.json"), str(tmp_path / "plots"), str(tmp_path / "tb")
    result = _run("analyze_dataset.py", "--data_dir", records, "--split", "train", "--fit_anchors", anchor_path,
                  "--output_dir", plots, "--tensorboard_dir", tb)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    coverage = report["coverage"]
    assert coverage["boxes"] == report["statistics"]["boxes"] > 2 * NUM_IMAGES
    # A 1:7 pole of the same area as the preset's 1:3 anchor reaches IoU 3/7 with it: forced matches.
    assert coverage["coverage"] < 0.3, coverage
    assert report["fit"]["coverage_after"] > 0.8
    assert report["fit"]["coverage_after"] - report["fit"]["coverage_before"] > 0.5, report["fit"]
    assert "Anchor coverage (ssd300_vgg16" in result.stdout and "Fitted anchors ->" in result.stdout
    assert report["suspicious"]["counts"] == {"duplicate": 0, "tiny": 0, "whole_image": 0,
                                              "empty_image": 0, "extreme_aspect": 0, "invalid": 0}
    for name in ("box_shapes", "distributions", "coverage", "box_shapes_fitted"):
        with Image.open(report["plots"][name]) as image:
            assert image.format == "PNG" and image.size[0] > 400
    assert "suspicious" not in report["plots"]   # nothing suspicious, no contact sheet
    tags = set()
    for path in glob.glob(os.path.join(tb, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"dataset_doctor/box_shapes", "dataset_doctor/coverage", "dataset_doctor/distributions"} <= tags

    preset = presets.get("ssd300_vgg16", 2, width_multiplier=0.125)
    fitted = anchor_file.apply(preset, anchor_path)
    assert fitted != preset and fitted.num_anchors == preset.num_anchors

    model_dir = str(tmp_path / "run")
    result = _run("train_ssd.py", "--data_dir", records, "--model_dir", model_dir, "--anchor_config", anchor_path,
                  "--width_multiplier", "0.125", "--batch_size", "4", "--image_summary_steps", "0",
                  "--optimizer", "adam", "--max_steps", "2", "--warmup_steps", "0",
                  "--save_checkpoints_steps", "2", "--log_every_n_steps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
    stored, class_names = checkpoints.read(model_dir)   # what eval, export and detect rebuild from
    assert stored == fitted and class_names == ("pole", "post")
    np.testing.assert_array_equal(anchors.generate(stored), anchors.generate(fitted))

    from nets import ssd
    assert ssd.build(fitted).count_params() == ssd.build(preset).count_params()


def test_anchor_file_errors_name_the_file(tmp_path):
    config = presets.get("ssd300_vgg16", 2)
    assert anchor_file.overrides(None, "ssd300_vgg16") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(app.UsageError, match="bad.json: not JSON"):
        anchor_file.overrides(str(bad), "ssd300_vgg16")
    bad.write_text('{"feature_maps": []}')
    with pytest.raises(ValueError, match="not an anchor file"):
        anchor_file.read(str(bad))
    with pytest.raises(ValueError, match="missing.json: cannot read it"):
        anchor_file.read(str(tmp_path / "missing.json"))
    good = str(tmp_path / "good.json")
    anchor_file.write(good, config, {"coverage_before": 0.5})
    with pytest.raises(app.UsageError, match="fitted for preset ssd300_vgg16, not ssd512_vgg16"):
        anchor_file.overrides(good, "ssd512_vgg16")
    assert anchor_file.overrides(good, "ssd300_vgg16") == {"feature_maps": config.feature_maps}
    assert json.load(open(good))["fit"] == {"coverage_before": 0.5}


@pytest.mark.slow
def test_coco_source_and_unknown_folder_exit_with_one_line(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    result = _run("analyze_dataset.py", "--data_dir", str(coco), "--output_dir", "")
    assert result.returncode == 2
    assert "is a COCO source: convert it to records first" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run("analyze_dataset.py", "--data_dir", str(tmp_path / "nothing"), "--output_dir", "")
    assert result.returncode == 2 and "neither records" in result.stderr and "Traceback" not in result.stderr
