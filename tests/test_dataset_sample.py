"""The committed sample: reproducible from dataset/make_sample.py and a fair small detection task."""

import collections
import os
import xml.etree.ElementTree as ET

import numpy as np

from dataset import make_sample

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "dataset", "sample")
MAX_SAMPLE_BYTES = 10 * 1024 * 1024


def _annotations():
    for name in sorted(os.listdir(os.path.join(SAMPLE_DIR, "Annotations"))):
        yield ET.parse(os.path.join(SAMPLE_DIR, "Annotations", name)).getroot()


def test_regenerating_a_subset_reproduces_the_committed_bytes(tmp_path):
    numbers = [1, 17, make_sample.NUM_TRAIN + 5]
    make_sample.write_sample(str(tmp_path), numbers)
    for number in numbers:
        for sub, ext in (("JPEGImages", ".jpg"), ("Annotations", ".xml")):
            name = make_sample.image_id(number) + ext
            assert (tmp_path / sub / name).read_bytes() == open(
                os.path.join(SAMPLE_DIR, sub, name), "rb").read(), name
    for split in ("train", "val"):
        name = os.path.join("ImageSets", "Main", split + ".txt")
        assert (tmp_path / name).read_text() == open(os.path.join(SAMPLE_DIR, name)).read()


def test_layout_split_sizes_and_total_size():
    def ids(split):
        with open(os.path.join(SAMPLE_DIR, "ImageSets", "Main", split + ".txt")) as f:
            return [line.strip() for line in f]
    train, val = ids("train"), ids("val")
    assert (len(train), len(val)) == (250, 80) and not set(train) & set(val)
    for image_id in train + val:
        assert os.path.isfile(os.path.join(SAMPLE_DIR, "JPEGImages", image_id + ".jpg"))
        assert os.path.isfile(os.path.join(SAMPLE_DIR, "Annotations", image_id + ".xml"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(SAMPLE_DIR) for f in fs)
    assert total <= MAX_SAMPLE_BYTES


def test_the_task_has_the_promised_variety():
    counts, classes, sizes = collections.Counter(), collections.Counter(), []
    difficult = truncated = 0
    for root in _annotations():
        w, h = int(root.find("size/width").text), int(root.find("size/height").text)
        sizes.append((w, h))
        objects = root.findall("object")
        counts[len(objects)] += 1
        for o in objects:
            classes[o.find("name").text] += 1
            difficult += o.find("difficult").text == "1"
            truncated += o.find("truncated").text == "1"
            box = [int(o.find("bndbox/" + t).text) for t in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] < box[2] <= w and 1 <= box[1] < box[3] <= h
    assert sorted(classes) == sorted(make_sample.CLASS_NAMES)
    assert min(classes.values()) >= 100  # every class well represented
    assert counts[0] >= 10 and max(counts) <= 6  # some empty images, at most 6 objects
    assert difficult >= 20 and truncated >= 100
    sides = np.array(sizes)
    assert sides.min() >= 250 and sides.max() <= 500
    assert np.mean(sides[:, 0] != sides[:, 1]) > 0.7  # mostly not square


def test_box_of_mask_is_the_tight_voc_box():
    # Boxes come from the pixels each object shows: True pixels at rows 40..60, columns 10..15
    # (0-based) are the VOC box xmin 11, ymin 41, xmax 16, ymax 61 (1-based inclusive).
    mask = np.zeros((100, 80), bool)
    mask[40:61, 10:16] = True
    assert make_sample.box_of_mask(mask) == (11, 41, 16, 61)
    mask[99, 79] = True  # one more pixel in the far corner stretches the box to the image edge
    assert make_sample.box_of_mask(mask) == (11, 41, 80, 100)
