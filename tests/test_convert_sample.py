"""The top-level converter with its default flags on the embedded sample, and read-back round trips."""

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from absl import flags
from PIL import Image

import convert_voc_sample_tfrecords as script
from dataset import reader
from dataset.voc_boxes import voc_pixels_to_normalized
from engine import cli
from test_convert import jpeg_bytes, make_voc, read_all, voc_xml

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "dataset", "sample")


def run_main(*argv):
    """Run the script's main with only `argv` flags set; returns its exit status."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["convert_voc_sample_tfrecords.py", *argv])
    pillow_limit = Image.MAX_IMAGE_PIXELS  # main sets Pillow's global guard; other tests keep theirs
    try:
        return script.main(["convert_voc_sample_tfrecords.py"])
    finally:
        flags.FLAGS.unparse_flags()
        Image.MAX_IMAGE_PIXELS = pillow_limit


@pytest.fixture(scope="module")
def sample_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample_tfrecords")
    return out, run_main("--output_directory=%s" % out)


def test_defaults_convert_the_embedded_sample(sample_output):
    out, status = sample_output
    assert status == 0
    assert sorted(os.listdir(out)) == ["label_map.pbtxt"] + [
        "train-%05d-of-00004" % i for i in range(4)] + ["val-%05d-of-00002" % i for i in range(2)]
    assert reader.read_label_map(str(out / "label_map.pbtxt")) == (
        "circle", "cross", "ellipse", "hexagon", "ring", "square", "star", "triangle")
    with open(os.path.join(SAMPLE_DIR, "ImageSets", "Main", "val.txt")) as f:
        val_ids = sorted(line.strip() for line in f)
    assert sorted(e["image_id"].decode() for e in read_all(out, "val")) == val_ids


def test_summary_is_printed(tmp_path, capsys):
    assert run_main("--output_directory=%s" % tmp_path, "--train_splits=",
                    "--validation_splits=sample:val", "--validation_shards=1") == 0
    printed = capsys.readouterr().out
    assert "val: 80 images" in printed and "objects per class: circle" in printed
    assert "skipped: 0 files" in printed


def test_round_trip_pixels_boxes_and_flags_match_the_sources(sample_output):
    out, _ = sample_output
    for example in read_all(out, "val")[:10]:
        image_id = example["image_id"].decode()
        expected = np.asarray(Image.open(os.path.join(SAMPLE_DIR, "JPEGImages", image_id + ".jpg")))
        np.testing.assert_array_equal(example["image"], expected)  # bit-exact against Pillow
        assert example["image"].shape == (example["height"], example["width"], 3)
        root = ET.parse(os.path.join(SAMPLE_DIR, "Annotations", image_id + ".xml")).getroot()
        objects = root.findall("object")
        pixels = [[float(o.find("bndbox/" + t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
                  for o in objects]
        np.testing.assert_allclose(
            example["boxes"], voc_pixels_to_normalized(pixels, example["width"],
                                                       example["height"]).reshape(-1, 4))
        assert example["difficult"].tolist() == [o.find("difficult").text == "1" for o in objects]
        assert example["truncated"].tolist() == [o.find("truncated").text == "1" for o in objects]
        assert example["boxes"].dtype == np.float32 and example["labels"].dtype == np.int32


def test_exit_status_reports_skips_unless_allowed(tmp_path):
    make_voc(tmp_path, "VOC", {"good": (jpeg_bytes(20, 20), voc_xml(20, 20, [("a", 1, 1, 5, 5)])),
                               "bad": (b"not an image", voc_xml(20, 20))},
             {"trainval": ["good", "bad"]})
    common = ["--dataset_directory=%s" % tmp_path, "--output_directory=%s" % (tmp_path / "out"),
              "--train_splits=VOC", "--validation_splits="]
    assert run_main(*common) == cli.EXIT_SKIPPED == 3
    assert run_main(*common, "--allow_skips") == 0
    # main raises with the message; engine/cli.run turns it into one line and exit 2 (test_cli_errors.py).
    with pytest.raises(FileNotFoundError, match="split missing_dir: no directory"):
        run_main(*common, "--train_splits=missing_dir")
