"""torchvision's SSD300-VGG16 weights imported through nets/torchvision_ssd.py and engine/fine_tune.py:
the same head outputs, anchors and detections as the real torchvision 0.28 on the same weights.

The fixture (tests/fixtures/torchvision_parity.npz) comes from tests/reference/torchvision_parity.py,
which ran `ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)` on CPU torch with
weights drawn from a numpy seed; here the same weights are drawn again from the seed and written as a
.pth without torch (tests/torch_files.py), so the test needs neither torch nor a 136 MB download.
"""

import os

import numpy as np
import pytest

from engine import fine_tune
from model import anchors as anchors_lib
from model import postprocess, presets
from nets import ssd, torch_weights, torchvision_ssd
from tests import torch_files
from tests.reference import torchvision_parity, torchvision_weights

pytestmark = pytest.mark.slow   # two full-width SSD300 models, four 300x300 forward passes

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_parity.npz")
COCO_80 = tuple(name for name in torchvision_ssd.COCO_91_CLASSES[1:] if name != torchvision_ssd.NA)
# Head outputs: max |difference| <= RELATIVE x max |reference| of the feature map (issue 24).
RELATIVE = 1e-5


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def pth(reference, tmp_path_factory):
    shapes = [tuple(int(s) for s in text.split(",")) if text else () for text in reference["shapes"]]
    names = [str(name) for name in reference["names"]]
    state = torchvision_weights.seeded_state_dict(list(zip(names, shapes)), int(reference["seed"]))
    path = tmp_path_factory.mktemp("tv") / "ssd300_vgg16_seeded.pth"
    torch_files.write_zip(path, state)
    return str(path)


@pytest.fixture(scope="module")
def images(reference):
    pixels = torchvision_parity.sample_images()
    assert list(pixels.reshape(len(pixels), -1).astype(np.int64).sum(axis=1)) == list(reference["pixel_sums"])
    return pixels


def _model(class_names, pth):
    config = presets.get("ssd300_vgg16_torchvision", len(class_names))
    model = ssd.build(config)
    line = fine_tune.load(model, config, class_names, pth)
    return config, model, line


def test_the_file_is_torchvisions_layout(reference, pth):
    weights = torch_weights.read_weights(pth)
    assert len(weights) == torchvision_ssd.NUM_TENSORS == len(reference["names"])
    assert sum(w.size for w in weights.values()) == torchvision_ssd.NUM_PARAMETERS


def test_head_outputs_91_columns(reference, pth, images):
    # 90 classes named as torchvision's columns 1..90 (N/A included): the identity gather, so the
    # model's logits are torchvision's 91 columns before any gather.
    config, model, line = _model(torchvision_ssd.COCO_91_CLASSES[1:], pth)
    assert "classes carried over: 80 of 90" in line      # "N/A" is never matched, even to itself
    # The ten N/A columns were kept from initialisation, not loaded: load them too, as torchvision has them.
    weights = torch_weights.read_weights(pth)
    entries = torchvision_ssd.table(model, config, list(range(torchvision_ssd.NUM_COLUMNS)))
    from nets.weight_table import assign
    assign(model, weights, entries, pth, what="detector")
    outputs = model(images, training=False)
    index = reference["anchor_index"]
    logits = outputs["cls_logits"].numpy()[:, index]                       # [N, a, 91]
    codes = outputs["box_codes"].numpy()[:, index][..., list(torchvision_ssd.BOX_CODE_ORDER)]  # -> dx, dy, dw, dh
    bounds = reference["map_bounds"]
    real = [c for c in range(91) if c not in torchvision_weights.NA_COLUMNS]
    na = list(torchvision_weights.NA_COLUMNS)
    for k, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = (index >= begin) & (index < end)
        assert rows.sum() > 0
        for ours, theirs, scale in ((logits[:, rows][..., real], reference["logits"][:, rows][..., real],
                                     reference["logits_scale"][k]),
                                    (logits[:, rows][..., na], reference["logits"][:, rows][..., na],
                                     reference["na_logits_scale"][k]),
                                    (codes[:, rows], reference["codes"][:, rows], reference["codes_scale"][k])):
            assert np.abs(ours - theirs).max() <= RELATIVE * scale, (k, np.abs(ours - theirs).max(), scale)


def test_anchors_are_torchvisions(reference):
    ours = anchors_lib.generate(presets.get("ssd300_vgg16_torchvision", 80))[reference["anchor_index"]]
    x1, y1, x2, y2 = (reference["anchors"] / torchvision_parity.IMAGE_SIZE).T  # torchvision: xyxy pixels
    np.testing.assert_allclose(ours, np.stack([y1, x1, y2, x2], axis=1), atol=1e-6)


def test_detections_80_classes(reference, pth, images):
    config, model, line = _model(COCO_80, pth)
    assert "classes carried over: 80 of 80" in line
    outputs = model(images, training=False)
    anchors = anchors_lib.generate(config)
    detections = postprocess.postprocess(outputs["cls_logits"], outputs["box_codes"], anchors, config)
    to_ours = {torchvision_ssd.COCO_91_CLASSES.index(name): i + 1 for i, name in enumerate(COCO_80)}
    for i in range(len(images)):
        count = int(detections["num_detections"][i])
        boxes = detections["detection_boxes"][i, :count].numpy()
        scores = detections["detection_scores"][i, :count].numpy()
        classes = detections["detection_classes"][i, :count].numpy()
        x1, y1, x2, y2 = (reference[f"detection_boxes_{i}"] / torchvision_parity.IMAGE_SIZE).T
        theirs_boxes = np.stack([y1, x1, y2, x2], axis=1)
        theirs_scores = reference[f"detection_scores_{i}"]
        theirs_classes = np.array([to_ours[int(c)] for c in reference[f"detection_labels_{i}"]])
        assert count == len(theirs_scores)
        # Both lists are sorted by score; near-equal scores may swap, so compare sorted by (class, score).
        ours_order, theirs_order = np.lexsort((-scores, classes)), np.lexsort((-theirs_scores, theirs_classes))
        np.testing.assert_array_equal(classes[ours_order], theirs_classes[theirs_order])
        # Logits agree within 1e-5 x ~15 (test above), so a softmax score within 2 x 1.5e-4 relative.
        np.testing.assert_allclose(scores[ours_order], theirs_scores[theirs_order], rtol=3e-4)
        np.testing.assert_allclose(boxes[ours_order], theirs_boxes[theirs_order], atol=1e-5)


def test_other_architectures_are_one_line(pth):
    for name, overrides, expected in (("ssd300_resnet34", {}, "backbone resnet34"),
                                      ("ssd300_vgg16_torchvision", {"width_multiplier": 0.5},
                                       "width_multiplier 0.5"),
                                      ("ssd512_vgg16_coco", {}, "image size 512")):
        config = presets.get(name, 3, **overrides)
        with pytest.raises(ValueError) as error:
            fine_tune.load(None, config, ("a", "b", "c"), pth)
        assert expected in str(error.value) and "\n" not in str(error.value)
