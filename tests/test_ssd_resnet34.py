"""The MLPerf SSD-ResNet34 preset: network shapes and parameter count, default boxes, loss normalisation.

Reference: mlcommons/training single_stage_detector/ssd at v0.7 (ssd300.py, base_model.py, utils.py).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from model import anchors, losses, presets
from nets import ssd
from nets.ssd import PixelNormalization

CLASSES = 80   # COCO: 81 logits with background, the reference's label_num


def _conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def _reference_parameter_count(label_num=CLASSES + 1):
    """sum(p.numel() for p in SSD300(label_num).parameters()), layer by layer from the reference's code.

    torchvision resnet34 through layer3: convs without bias, BN weight + bias (running stats are buffers).
    """
    bn = lambda c: 2 * c
    backbone = _conv(7, 3, 64, False) + bn(64)                                        # conv1, bn1
    for cin, cout, blocks in ((64, 64, 3), (64, 128, 4), (128, 256, 6)):             # layer1..layer3
        for b in range(blocks):
            first_in = cin if b == 0 else cout
            backbone += _conv(3, first_in, cout, False) + bn(cout) + _conv(3, cout, cout, False) + bn(cout)
            if b == 0 and cin != cout:
                backbone += _conv(1, cin, cout, False) + bn(cout)                     # downsample
    out_channels = [256, 512, 512, 256, 256, 256]
    mids = [256, 256, 128, 128, 128]
    extras = sum(_conv(1, cin, mid, True) + _conv(3, mid, cout, True)
                 for cin, mid, cout in zip(out_channels[:-1], mids, out_channels[1:]))
    heads = sum(_conv(3, c, n * 4, True) + _conv(3, c, n * label_num, True)
                for n, c in zip([4, 6, 6, 6, 4, 4], out_channels))
    return backbone, extras, heads


@pytest.fixture(scope="module")
def model():
    return ssd.build(presets.get("ssd300_resnet34", CLASSES))


def test_parameter_count_equals_the_reference_s(model):
    backbone, extras, heads = _reference_parameter_count()
    # By hand: backbone 9,408 + 128 + layer1 221,952 + layer2 1,116,416 + layer3 6,822,400 = 8,170,304;
    # extras 1,245,952 + 1,311,488 + 360,832 + 328,064 + 328,064 = 3,574,400;
    # heads sum of n * 85 * (9 c + 1) = 8,227,830.
    assert (backbone, extras, heads) == (8_170_304, 3_574_400, 8_227_830)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == backbone + extras + heads == 19_972_534
    # BN moving mean and variance (torch buffers): 2 x (64 + 6*64 + 9*128 + 13*256) = 9,856.
    assert sum(int(np.prod(v.shape)) for v in model.non_trainable_variables) == 9_856


def test_feature_maps_and_outputs(model):
    shapes = {name: tuple(model.get_layer(layer).output.shape[1:]) for name, layer in
              (("layer3", "layer3_5_relu2"), ("conv7_2", "conv7_2"), ("conv8_2", "conv8_2"),
               ("conv9_2", "conv9_2"), ("conv10_2", "conv10_2"), ("conv11_2", "conv11_2"))}
    assert shapes == {"layer3": (38, 38, 256), "conv7_2": (19, 19, 512), "conv8_2": (10, 10, 512),
                      "conv9_2": (5, 5, 256), "conv10_2": (3, 3, 256), "conv11_2": (1, 1, 256)}
    # layer3's first block runs at stride 1, and conv1 / the max pool pad symmetrically as PyTorch does.
    assert model.get_layer("layer3_0_conv1").strides == (1, 1)
    assert model.get_layer("layer3_0_downsample_0").strides == (1, 1)
    assert model.get_layer("conv1_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("layer2_0_conv1").strides == (2, 2)
    bn = model.get_layer("bn1")
    assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)
    out = model(np.zeros((1, 300, 300, 3), np.float32))
    assert out["cls_logits"].shape == (1, 8732, 81) and out["box_codes"].shape == (1, 8732, 4)


def test_extra_batch_norm_option():
    config = presets.get("ssd300_resnet34", CLASSES, extra_batch_norm=True, width_multiplier=0.125)
    net = ssd.build(config)
    assert not net.get_layer("conv7_1").use_bias and net.get_layer("conv7_1_bn").epsilon == 1e-5
    assert net.get_layer("conv11_2_relu").output.shape[1:3] == (1, 1)


def _reference_default_boxes():
    """DefaultBoxes(300, [38,19,10,5,3,1], [8,16,32,64,100,300], [21,...,315], ratios) re-derived:
    per map, per size (w, h) outermost, then i, j; (cx, cy, w, h) clamped to [0, 1]."""
    sizes, steps = [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    scales = [21, 45, 99, 153, 207, 261, 315]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    per_map = []
    for k, size in enumerate(sizes):
        fk = 300 / steps[k]
        s1, s2 = scales[k] / 300, scales[k + 1] / 300
        wh = [(s1, s1), (math.sqrt(s1 * s2),) * 2]
        for r in ratios[k]:
            wh += [(s1 * math.sqrt(r), s1 / math.sqrt(r)), (s1 / math.sqrt(r), s1 * math.sqrt(r))]
        boxes = [((j + 0.5) / fk, (i + 0.5) / fk, w, h) for w, h in wh for i in range(size) for j in range(size)]
        per_map.append(np.clip(np.array(boxes, np.float32), 0, 1).reshape(len(wh), size, size, 4))
    return per_map


def test_default_boxes_are_the_reference_s():
    config = presets.get("ssd300_resnet34", CLASSES)
    ours = anchors.generate(config)
    assert ours.shape == (8732, 4) and config.num_anchors == 8732
    # Hand-computed: map 38, cell (0, 0): centre 4/300, 21 px square -> corners 4/300 -+ 0.035 (not clipped:
    # the reference clamps centre and size, not the corners).
    np.testing.assert_allclose(ours[0], [4 / 300 - 0.035] * 2 + [4 / 300 + 0.035] * 2, atol=1e-7)
    np.testing.assert_allclose(ours[1, 2] - ours[1, 0], math.sqrt(21 * 45) / 300, atol=1e-7)   # 0.102470
    # Map 10x10 starts at 5776 + 2166 = 7942; its last cell (9, 9), box 0, is anchor 7942 + 99 * 6 = 8536: centre 9.5 * 32
    # = 304 px clamped to 300 (the reference clamps centres too), 99 px square around it.
    np.testing.assert_allclose(ours[8536], [1 - 0.165, 1 - 0.165, 1 + 0.165, 1 + 0.165], atol=1e-6)
    # Map 1x1 (anchors 8728..8731): 261 px square, sqrt(261 * 315) = 286.74 px, then the ratio-2 pair
    # 369.1 x 184.55 px whose 1.2304 width is clamped to 1: [0.19241, 0, 0.80759, 1] and its transpose.
    np.testing.assert_allclose(ours[8728], [0.065, 0.065, 0.935, 0.935], atol=1e-6)
    half = 261 / math.sqrt(2) / 300 / 2
    np.testing.assert_allclose(ours[8730], [0.5 - half, 0.0, 0.5 + half, 1.0], atol=1e-6)
    np.testing.assert_allclose(ours[8731], [0.0, 0.5 - half, 1.0, 0.5 + half], atol=1e-6)
    # Every box equals the reference's, our order being (row, col, box) where it is (box, row, col).
    offset = 0
    for fm, ref in zip(config.feature_maps, _reference_default_boxes()):
        count = fm.size * fm.size * fm.boxes_per_location
        mine = ours[offset:offset + count].reshape(fm.size, fm.size, fm.boxes_per_location, 4)
        cx, cy, w, h = np.moveaxis(np.moveaxis(ref, 0, 2), -1, 0)     # [box, i, j, 4] -> 4 x [i, j, box]
        ltrb_as_yxyx = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
        np.testing.assert_allclose(mine, ltrb_as_yxyx, atol=2e-7, err_msg=fm.source)
        offset += count
    # The VGG presets stay unclipped (Caffe clip: false): SSD300's last ratio-2 box is 264 * sqrt(2) =
    # 373.4 px wide, 1.2445 of the image.
    vgg = anchors.generate(presets.get("ssd300_vgg16", 20))
    assert vgg[-2, 3] - vgg[-2, 1] == pytest.approx(264 * math.sqrt(2) / 300, rel=1e-6)


# A hand-made batch: A = 4 anchors, C = 2 classes.
LOG3 = math.log(3)
IMAGE0 = dict(logits=[[0, 0, 0], [0, 1, 0], [2, 0, 0], [0, 2, 0]], targets=[1, 0, 0, 0],
              codes=[[0.5, -2, 0, 0], [0] * 4, [0] * 4, [0] * 4])
IMAGE1 = dict(logits=[[0, 0, 0]] * 4, targets=[1, 2, 0, 0], codes=[[0.5, 0, 0, 0], [0, 0, 0, 2], [0] * 4, [0] * 4])
IMAGE2 = dict(logits=[[0, 0, 0]] * 4, targets=[0, 0, 0, 0], codes=[[0] * 4] * 4)
# Image 0: 1 positive (CE log 3, smooth L1 0.125 + 1.5 = 1.625), 3 mined negatives (CE log(2+e),
# log(e^2+2) - 2, log(2+e^2)). Image 1: 2 positives and both negatives, all CE log 3; L1 0.125 + 1.5.
# Image 2: no positives, no negatives mined: 0.
CLS0 = LOG3 + math.log(2 + math.e) + math.log(math.e ** 2 + 2) - 2 + math.log(2 + math.e ** 2)   # 5.1291
CLS1, BOX0, BOX1 = 4 * LOG3, 1.625, 1.625


def _batch_loss(**kwargs):
    images = (IMAGE0, IMAGE1, IMAGE2)
    stack = lambda key, dtype: np.asarray([im[key] for im in images], dtype)
    return {k: float(v) for k, v in losses.multibox_loss(
        stack("logits", np.float32), stack("codes", np.float32), stack("targets", np.int32),
        np.zeros((3, 4, 4), np.float32), **kwargs).items()}


def test_caffe_batch_positives_normalisation():
    out = _batch_loss()                                   # (sums over the batch) / 3 positives
    assert out["cls_loss"] == pytest.approx((CLS0 + CLS1) / 3, rel=1e-5)
    assert out["box_loss"] == pytest.approx((BOX0 + BOX1) / 3, rel=1e-5)
    assert out["num_positives"] == 3


def test_mlperf_per_image_normalisation():
    out = _batch_loss(normalization=losses.PER_IMAGE)     # mean over 3 images of (image sum / own positives)
    assert out["cls_loss"] == pytest.approx((CLS0 / 1 + CLS1 / 2 + 0) / 3, rel=1e-5)   # 2.4422
    assert out["box_loss"] == pytest.approx((BOX0 / 1 + BOX1 / 2 + 0) / 3, rel=1e-5)   # 0.8125
    assert out["total_loss"] == pytest.approx(out["cls_loss"] + out["box_loss"])
    # Under tf.distribute the divisor is the global batch: 6 images halve it.
    half = _batch_loss(normalization=losses.PER_IMAGE, normalizer=6.0)
    assert half["cls_loss"] == pytest.approx(out["cls_loss"] / 2, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss normalization 'sum'"):
        _batch_loss(normalization="sum")


def test_preset_fields_and_json_round_trip():
    config = presets.get("ssd300_resnet34", CLASSES)
    assert config.backbone == "resnet34" and config.anchor_clip == "center_size"
    assert config.loss_normalization == presets.PER_IMAGE
    assert presets.from_json(presets.to_json(config)) == config
    vgg = presets.get("ssd300_vgg16", 20)
    assert (vgg.backbone, vgg.pixel_std, vgg.anchor_clip, vgg.loss_normalization) == \
        ("vgg16", (1.0, 1.0, 1.0), "none", presets.BATCH_POSITIVES)


def test_normalize_is_the_reference_s_torchvision_normalisation():
    config = presets.get("ssd300_resnet34", CLASSES)
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    # transforms.ToTensor then Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(PixelNormalization(config.pixel_mean, config.pixel_std)(tf.constant(pixel)).numpy()[0, 0], expected, rtol=1e-5)
    vgg = presets.get("ssd300_vgg16", 20)
    np.testing.assert_allclose(PixelNormalization(vgg.pixel_mean, vgg.pixel_std)(tf.constant(pixel)).numpy()[0, 0],
                               [255 - 123.68, -116.78, 128 - 103.94], rtol=1e-6)
