"""engine/fine_tune.py: a whole detector of this project loaded into a run on another class set."""

import numpy as np
import pytest
import tensorflow as tf

from engine import checkpoints, fine_tune
from model import presets
from nets import ssd

TINY = dict(width_multiplier=0.125)
SOURCE_NAMES = ("aeroplane", "person", "sofa", "dog")
TARGET_NAMES = ("dog", "Couch", "airplane", "zebra")


def test_class_columns_by_name_with_the_voc_coco_aliases():
    # dog is source column 4, couch = sofa 3, airplane = aeroplane 1 (case ignored); zebra is new.
    assert fine_tune.class_columns(SOURCE_NAMES, TARGET_NAMES) == [0, 4, 3, 1, None]
    voc = ("aeroplane", "diningtable", "motorbike", "pottedplant", "sofa", "tvmonitor")
    coco = ("tv", "couch", "potted plant", "motorcycle", "dining table", "airplane")
    assert fine_tune.class_columns(voc, coco) == [0, 6, 5, 4, 3, 2, 1]
    assert fine_tune.class_columns(coco, voc) == [0, 6, 5, 4, 3, 2, 1]
    assert fine_tune.class_columns(("N/A", "cat"), ("N/A", "cat"), skip=("N/A",)) == [0, None, 2]


def _random_weights(model, seed):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """A model_dir as train_ssd.py leaves it: config.json, label map and ckpt-7 of random weights."""
    model_dir = str(tmp_path_factory.mktemp("source"))
    config = presets.get("ssd300_vgg16", len(SOURCE_NAMES), **TINY)
    model = ssd.build(config)
    _random_weights(model, 1)
    checkpoints.write(model_dir, config, SOURCE_NAMES)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), model_dir, 1).save(checkpoint_number=7)
    return model_dir, model


def test_everything_loads_and_shared_classes_keep_their_columns(source_dir):
    model_dir, source = source_dir
    config = presets.get("ssd300_vgg16", len(TARGET_NAMES), **TINY)
    model = ssd.build(config)
    initial = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    line = fine_tune.load(model, config, TARGET_NAMES, model_dir)
    assert line.endswith("classes carried over: 3 of 4 (dog, Couch, airplane); new, initialised: zebra")
    assert "ckpt-7" in line
    conf_layers = {fm.source + ssd.CONF_SUFFIX: fm.boxes_per_location for fm in config.feature_maps}
    checked = 0
    for layer in model.layers:
        if not layer.get_weights():
            continue
        ours, theirs = layer.get_weights(), source.get_layer(layer.name).get_weights()
        if layer.name not in conf_layers:
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a, b)
            checked += 1
            continue
        boxes = conf_layers[layer.name]
        for a, b, fresh in zip(ours, theirs, initial[layer.name]):
            a = a.reshape(a.shape[:-1] + (boxes, 5))           # [..., boxes, C + 1]
            b = b.reshape(b.shape[:-1] + (boxes, 5))
            fresh = fresh.reshape(fresh.shape[:-1] + (boxes, 5))
            for ours_column, their_column in ((0, 0), (1, 4), (2, 3), (3, 1)):
                np.testing.assert_array_equal(a[..., ours_column], b[..., their_column])
            np.testing.assert_array_equal(a[..., 4], fresh[..., 4])   # zebra: as initialised
        checked += 1
    assert checked == 15 + 8 + 1 + 12   # VGG convs, extra convs, the conv4_3 norm, 12 heads


def test_a_ckpt_prefix_and_the_same_classes(source_dir):
    model_dir, source = source_dir
    config = presets.get("ssd300_vgg16", len(SOURCE_NAMES), **TINY)
    model = ssd.build(config)
    line = fine_tune.load(model, config, SOURCE_NAMES, f"{model_dir}/ckpt-7")
    assert "classes carried over: 4 of 4" in line and "new" not in line
    for a, b in zip(model.weights, source.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name, overrides, expected", [
    ("ssd300_vgg16", dict(width_multiplier=0.25), "width_multiplier 0.125 (this run: 0.25)"),
    ("ssd512_vgg16", TINY, "image_size 300 (this run: 512)"),
    ("ssd300_resnet34", TINY, "backbone vgg16 (this run: resnet34)"),
    # Same weights' shapes, another padding: computed otherwise, so refused too (nets/mobilenet_v3.py).
    ("ssd300_vgg16", dict(TINY, backbone_padding=presets.KERAS_PADDING), "backbone_padding torch (this run: keras)"),
])
def test_another_architecture_is_one_line(source_dir, name, overrides, expected):
    model_dir, _ = source_dir
    config = presets.get(name, 2, **overrides)
    with pytest.raises(ValueError) as error:
        fine_tune.load(None, config, ("a", "b"), model_dir)
    message = str(error.value)
    assert expected in message and "\n" not in message and "another architecture" in message


def test_other_anchor_sizes_are_the_same_architecture(source_dir):
    model_dir, _ = source_dir
    config = presets.get("ssd300_vgg16_coco", 2, **TINY)   # the COCO anchors 21..315, same layers
    line = fine_tune.load(ssd.build(config), config, ("dog", "cat"), model_dir)
    assert "classes carried over: 1 of 2 (dog); new, initialised: cat" in line


def test_a_run_takes_the_source_s_tail_and_padding(source_dir):
    """train_ssd.py builds a fine-tuned MobileNetV3 run with these (no flag sets them)."""
    model_dir, _ = source_dir
    assert fine_tune.source_backbone_fields(model_dir) == {"reduced_tail": False, "backbone_padding": "torch"}
    assert fine_tune.source_backbone_fields("ssdlite320_mobilenet_v3_large_coco-a79551df.pth") == {}


def test_missing_or_foreign_paths(tmp_path):
    config = presets.get("ssd300_vgg16", 2, **TINY)
    with pytest.raises(FileNotFoundError, match="neither a model_dir, a ckpt-N prefix nor"):
        fine_tune.load(None, config, ("a", "b"), str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in that folder"):
        fine_tune.load(None, config, ("a", "b"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        fine_tune.load(None, config, ("a", "b"), str(tmp_path / "model.pth"))


def test_a_pth_that_is_not_torchvisions_ssd(tmp_path):
    from tests import torch_files
    path = str(tmp_path / "resnet34.pth")
    torch_files.write_zip(path, {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    config = presets.get("ssd300_vgg16_torchvision", 2)
    with pytest.raises(ValueError, match="is not a torchvision SSD300-VGG16 state dict"):
        fine_tune.load(None, config, ("a", "b"), path)


@pytest.mark.slow   # starts train_ssd.py (it stops at flag parsing, before TensorFlow loads)
def test_max_steps_0_only_with_a_fine_tune_checkpoint(sample_records):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(repo, "train_ssd.py"), "--data_dir", sample_records,
                             "--max_steps", "0"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("train_ssd.py: error: ")
    assert "--max_steps must be > 0 (0 only with --fine_tune_checkpoint: import and stop)" in result.stderr
