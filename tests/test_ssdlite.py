"""The ssdlite320_mobilenet_v3_large preset against torchvision's ssdlite320_mobilenet_v3_large.

Reference: pytorch/vision torchvision/models/detection/ssdlite.py, anchor_utils.py, ssd.py and
models/mobilenetv3.py. tests/fixtures/torchvision_ssdlite.npz holds what the real torchvision 0.28
computed on the CPU torch (tests/reference/torchvision_ssdlite.py): its parameter counts, its default
boxes, and, for seeded weights and a seeded image (tests/reference/seeded_weights.py, regenerated here),
its head outputs, detections, SSDMatcher matches and loss terms.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from dataset import fields
from model import anchors, box_coder, box_ops, losses, matcher, postprocess, presets, targets
from nets import mobilenet_v3, ssd, torchvision_ssdlite
from tests import torch_files
from tests.reference import seeded_weights

NAME = "ssdlite320_mobilenet_v3_large"
COCO_CLASSES = 90            # torchvision's num_classes=91 counts the background
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_ssdlite.npz")
# torchvision BoxCoder order (dx, dy, dw, dh) -> ours (ty, tx, th, tw); xyxy -> yxyx likewise.
TORCH_TO_OURS = [1, 0, 3, 2]

# torchvision _mobilenet_v3_conf("mobilenet_v3_large") written out by hand: per block (input, kernel,
# expanded, output, SE squeeze channels or 0). SE squeeze = _make_divisible(expanded // 4, 8):
# 72 -> 24 (18 rounds to 16, below 0.9 x 18, so 24), 120 -> 32, 480 -> 120, 672 -> 168, 960 -> 240.
FULL_BLOCKS = [(16, 3, 16, 16, 0), (16, 3, 64, 24, 0), (24, 3, 72, 24, 0), (24, 5, 72, 40, 24),
               (40, 5, 120, 40, 32), (40, 5, 120, 40, 32), (40, 3, 240, 80, 0), (80, 3, 200, 80, 0),
               (80, 3, 184, 80, 0), (80, 3, 184, 80, 0), (80, 3, 480, 112, 120), (112, 3, 672, 112, 168),
               (112, 5, 672, 160, 168), (160, 5, 960, 160, 240), (160, 5, 960, 160, 240)]
# reduced_tail: 160 // 2 and 960 // 2 in the last three blocks (block 13 keeps 112 in, 672 expanded).
REDUCED_BLOCKS = FULL_BLOCKS[:12] + [(112, 5, 672, 80, 168), (80, 5, 480, 80, 120), (80, 5, 480, 80, 120)]


def _conv_bn(k, cin, cout, groups=1):
    """Conv2dNormActivation: conv without bias + BN weight and bias (running stats are buffers)."""
    return k * k * cin // groups * cout + 2 * cout


def _torchvision_parameter_count(blocks, num_logits=COCO_CLASSES + 1):
    """sum(p.numel() for p in model.parameters()) of ssdlite320_mobilenet_v3_large, layer by layer."""
    backbone = _conv_bn(3, 3, 16)                                                  # features[0]
    for cin, k, expanded, cout, squeeze in blocks:
        if expanded != cin:
            backbone += _conv_bn(1, cin, expanded)                                  # expansion
        backbone += _conv_bn(k, expanded, expanded, groups=expanded)                # depthwise
        if squeeze:
            backbone += expanded * squeeze + squeeze + squeeze * expanded + expanded  # fc1, fc2 with bias
        backbone += _conv_bn(1, expanded, cout)                                     # projection
    last = blocks[-1][3]
    backbone += _conv_bn(1, last, 6 * last)                                         # features[16]
    channels = [blocks[12][2], 6 * last, 512, 256, 256, 128]
    # the four extra blocks: C5 -> 512 -> 256 -> 256 -> 128, each 1x1 to half, depthwise 3x3, 1x1.
    extras = sum(_conv_bn(1, cin, cout // 2) + _conv_bn(3, cout // 2, cout // 2, groups=cout // 2)
                 + _conv_bn(1, cout // 2, cout) for cin, cout in zip(channels[1:5], channels[2:]))
    boxes = 6
    heads = sum(2 * _conv_bn(3, c, c, groups=c) + c * boxes * num_logits + boxes * num_logits
                + c * boxes * 4 + boxes * 4 for c in channels)
    return backbone, extras, heads


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def coco_model():
    """The preset as torchvision builds it by default: 91 logits, reduced tail."""
    return ssd.build(presets.get(NAME, COCO_CLASSES))


@pytest.mark.slow
def test_parameter_counts_equal_torchvision_s_layer_by_layer(reference, coco_model):
    reduced = _torchvision_parameter_count(REDUCED_BLOCKS)
    full = _torchvision_parameter_count(FULL_BLOCKS)
    # The extras and heads differ only through C5 (480 or 960 channels).
    assert sum(reduced) == 3_440_060 == int(reference["num_parameters"])
    assert sum(full) == 5_198_540 == int(reference["num_parameters_full_tail"])
    assert reduced == (1_620_512, 452_160, 1_367_388)
    assert full == (2_971_952, 575_040, 1_651_548)
    for model, expected in ((coco_model, reduced), (ssd.build(presets.get(NAME, COCO_CLASSES, reduced_tail=False)), full)):
        assert _trainable(model) == sum(expected)
        keras_backbone = sum(int(np.prod(w.shape)) for layer in model.layers
                             if layer.name.startswith("features_") for w in layer.trainable_weights)
        assert keras_backbone == expected[0]


def test_feature_maps_channels_and_sizes(coco_model):
    config, model = presets.get(NAME, COCO_CLASSES), coco_model
    shapes = [tuple(model.get_layer(f"{fm.source}_mbox_conf_dw_pad").input.shape[1:]) for fm in config.feature_maps]
    assert shapes == [(20, 20, 672), (10, 10, 480), (5, 5, 512), (3, 3, 256), (2, 2, 256), (1, 1, 128)]
    # C4 is block 13's expansion output, before its depthwise stride-2 conv.
    assert model.get_layer("features_13_expand_act").output.shape[1:] == (20, 20, 672)
    for layer in model.layers:
        if "BatchNormalization" in type(layer).__name__:
            assert (layer.epsilon, layer.momentum) == (1e-3, 0.97), layer.name
    assert config.num_anchors == 6 * (400 + 100 + 25 + 9 + 4 + 1) == 3234


def test_input_scaling_to_minus_one_one():
    config = presets.get(NAME, 3)
    layer = ssd.PixelNormalization(config.pixel_mean, config.pixel_std)
    out = np.asarray(layer(np.array([[[[0, 127.5, 255]]]], np.float32)))
    np.testing.assert_allclose(out, [[[[-1.0, 0.0, 1.0]]]])


def test_anchors_equal_torchvision_s_default_boxes(reference):
    config = presets.get(NAME, 3)
    ours = anchors.generate(config)
    theirs = reference["anchors"][:, TORCH_TO_OURS] / 320.0          # xyxy pixels -> yxyx normalized
    assert ours.shape == theirs.shape == (3234, 4)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-7)
    # By hand: the first box is the 0.2 square at the first 20x20 cell's centre (8 px), so
    # 8/320 -/+ 0.1; the 3x3 map's step is 320/3 px and its ratio-3 boxes are clamped to width 1.
    np.testing.assert_allclose(ours[0], [0.025 - 0.1, 0.025 - 0.1, 0.025 + 0.1, 0.025 + 0.1], atol=1e-7)
    steps = [fm.step for fm in config.feature_maps]
    np.testing.assert_allclose(steps, [16, 32, 64, 320 / 3, 160, 320])


def _seeded_state(reference):
    names = [str(n) for n in reference["names"]]
    flat, shapes = list(reference["shapes"]), []
    for rank in reference["ranks"]:
        shapes.append(tuple(flat[:rank]))
        flat = flat[rank:]
    return seeded_weights.seeded_state(names, shapes, int(reference["seed"]))


@pytest.mark.slow
def test_forward_and_detections_equal_torchvision_s_from_a_pth(reference, tmp_path):
    """torchvision's model on seeded weights, written as a .pth and imported: same logits, box codes,
    and, through our post-processing, the same 300 detections in the same order."""
    state = _seeded_state(reference)
    path = str(tmp_path / "seeded.pth")
    torch_files.write_zip(path, state)
    config = presets.get(NAME, reference["cls_logits"].shape[-1] - 1)
    model = ssd.build(config)
    assert torchvision_ssdlite.load(model, config, path) == len(state) - sum("num_batches" in n for n in state)
    images = seeded_weights.seeded_images(int(reference["num_images"]), 320, int(reference["seed"]))
    outputs = model(images, training=False)
    np.testing.assert_allclose(outputs[fields.CLS_LOGITS], reference["cls_logits"], atol=2e-6)
    np.testing.assert_allclose(outputs[fields.BOX_CODES], reference["bbox_regression"][..., TORCH_TO_OURS], atol=2e-6)

    detections = postprocess.postprocess(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES],
                                         anchors.generate(config), config)
    count = int(reference["num_detections"][0])
    assert int(detections[fields.NUM_DETECTIONS][0]) == count == 300
    np.testing.assert_allclose(detections[fields.DETECTION_SCORES][0], reference["det_scores"][0], atol=1e-6)
    np.testing.assert_array_equal(detections[fields.DETECTION_CLASSES][0], reference["det_labels"][0])
    np.testing.assert_allclose(detections[fields.DETECTION_BOXES][0],
                               reference["det_boxes"][0][:, TORCH_TO_OURS] / 320.0, atol=1e-6)


def test_import_refuses_a_file_of_another_class_count(reference, coco_model):
    state = _seeded_state(reference)          # 5 logits; the model has 91
    config, model = presets.get(NAME, COCO_CLASSES), coco_model
    with pytest.raises(ValueError, match="mismatched"):
        torchvision_ssdlite.load_state(model, config, state, "seeded.pth")
    with pytest.raises(ValueError, match="neither a torchvision SSDLite"):
        torchvision_ssdlite.load_state(model, config, {"conv1.weight": np.zeros(1)}, "other.pth")


def _gt(reference):
    boxes = reference["gt_boxes"][:, TORCH_TO_OURS] / 320.0
    return tf.constant(boxes[None], tf.float32), tf.constant(reference["gt_labels"][None], tf.int32)


def test_matching_equals_torchvision_s_ssd_matcher(reference):
    """IoU 0.5, then each box claims its best anchor, a later box taking a shared one (the fixture's
    last two boxes, one pixel apart: torchvision gives their anchor to the last). Where the two differ,
    the anchors' IoUs are equal to float precision (ratio boxes of one scale have equal areas, so a box
    that contains them ties exactly in real arithmetic; torchvision computes in pixels, we in [0, 1])."""
    config = presets.get(NAME, 4)
    assert config.matching == matcher.SSD_PYTORCH and config.match_threshold == 0.5
    grid = anchors.generate(config)
    boxes, labels = _gt(reference)
    iou = np.asarray(box_ops.iou(boxes[0], grid))                                   # [G, A]
    ours = np.asarray(matcher.match(iou[None], np.ones((1, iou.shape[0]), bool), 0.5, config.matching))[0]
    theirs = reference["matched_idxs"]
    assert (theirs == NO_BOX).sum() > 3000 and (theirs == 6).sum() >= 1 and (theirs == 5).sum() == 0
    differ = np.nonzero(ours != theirs)[0]
    for box in set(ours[differ]) | set(theirs[differ]):
        if box == NO_BOX:
            continue
        mine, other = np.nonzero(ours == box)[0], np.nonzero(theirs == box)[0]
        assert len(mine) == len(other)
        np.testing.assert_allclose(np.sort(iou[box, mine]), np.sort(iou[box, other]), atol=1e-6)
    assert len(differ) <= 6


NO_BOX = -1


def test_loss_equals_torchvision_s_compute_loss_on_its_matches(reference):
    config = presets.get(NAME, 4)
    grid = anchors.generate(config)
    boxes, labels = _gt(reference)
    matched = reference["matched_idxs"]
    positive = matched >= 0
    cls_targets = np.where(positive, reference["gt_labels"][np.maximum(matched, 0)], 0)[None]
    box_targets = box_coder.encode(tf.gather(boxes[0], np.maximum(matched, 0)), grid, config.variances)[None]
    result = losses.multibox_loss(reference["cls_logits"][:1], reference["bbox_regression"][:1][..., TORCH_TO_OURS],
                                  cls_targets, box_targets, config.negative_ratio,
                                  normalization=config.loss_normalization)
    assert float(result["num_positives"]) == positive.sum() == 26
    np.testing.assert_allclose(float(result["box_loss"]), reference["loss_bbox_regression"], rtol=1e-5)
    np.testing.assert_allclose(float(result["cls_loss"]), reference["loss_classification"], rtol=1e-5)
    # encode_targets (our matcher) gives the same positives count: ties only move a claim between anchors.
    ours = targets.encode_targets(boxes, labels, np.ones((1, 7), bool), grid, config)
    assert float(ours[fields.NUM_POSITIVES][0]) == 26


def test_postprocess_settings_are_torchvision_s():
    config = presets.get(NAME, 90)
    assert (config.score_threshold, config.nms_iou_threshold, config.max_detections_per_class,
            config.max_detections, config.clip_boxes_before_nms, config.anchor_clip) == (
        0.001, 0.55, 300, 300, True, "size")


def test_block_settings_follow_torchvision_s_rules():
    assert [s[:4] for s in mobilenet_v3.block_settings(1.0, True)] == [b[:4] for b in REDUCED_BLOCKS]
    assert [s[:4] for s in mobilenet_v3.block_settings(1.0, False)] == [b[:4] for b in FULL_BLOCKS]
    # _make_divisible: 16 * 0.25 = 4 -> 8 (at least the divisor); 72 * 0.5 = 36 -> 40 (nearest multiple).
    assert mobilenet_v3.make_divisible(4) == 8 and mobilenet_v3.make_divisible(36) == 40
    assert mobilenet_v3.make_divisible(18) == 24


_TO_TORCH_AXES = {"oihw_to_hwio": (3, 2, 0, 1), "depthwise_oihw_to_hwcm": (2, 3, 0, 1)}


@pytest.mark.slow
def test_train_ssd_s_backbone_route_loads_torchvision_s_imagenet_mobilenet_v3(tmp_path):
    """--checkpoint_path with torchvision's ImageNet mobilenet_v3_large-*.pth (full tail, `features.*`):
    training.init_backbone -> nets/backbone_loader -> torchvision_ssdlite.load_imagenet_backbone, every
    backbone weight assigned in our layout. The file is seeded (tests/reference/seeded_weights.py) and
    written without torch; its tensors take torch's layouts, the inverse of each row's conversion."""
    from engine import training

    config = presets.get(NAME, 3, reduced_tail=False)
    model = ssd.build(config)
    table = torchvision_ssdlite.imagenet_backbone_table()
    shapes = []
    for entry in table:
        shape = tuple(getattr(model.get_layer(entry.layer), entry.kind).shape)
        axes = _TO_TORCH_AXES.get(entry.convert.__name__)
        shapes.append(tuple(shape[a] for a in axes) if axes else shape)
    names = [entry.source for entry in table]
    state = seeded_weights.seeded_state(names, shapes, 7)
    state["classifier.0.weight"] = np.zeros([1280, 960], np.float32)   # in the file, not used
    path = str(tmp_path / "mobilenet_v3_large-8738ca79.pth")
    torch_files.write_zip(path, state)

    assert training.init_backbone(model, path, True, "sgd") == len(table)
    stem = model.get_layer(mobilenet_v3.FIRST_LAYER).kernel.numpy()
    np.testing.assert_array_equal(stem, state["features.0.0.weight"].transpose(2, 3, 1, 0))
    depthwise = model.get_layer("features_1_dw").kernel.numpy()
    np.testing.assert_array_equal(depthwise, state["features.1.block.0.0.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(model.get_layer("features_16_conv_bn").moving_mean.numpy(),
                                  state["features.16.1.running_mean"])
    # The reduced-tail model (the preset's default, from scratch) is refused, naming the mismatch.
    with pytest.raises(ValueError, match="features.16.0.weight"):
        training.init_backbone(ssd.build(presets.get(NAME, 3)), path, True, "sgd")
