"""dataset/lint.py: statistics checked by hand, and every planted defect found, nothing else."""

import numpy as np
from pytest import approx

from dataset import lint
from dataset.annotations import Annotations

# Normalized sqrt(area) below which a box is tiny, as analyze_dataset.py derives it for SSD300:
# 30 px * sqrt(0.5) / 300.
TINY_SIDE = 30 * np.sqrt(0.5) / 300


def table(images, boxes, class_names=("pole", "sign")):
    """images [(id, width, height)], boxes [(image index, [ymin, xmin, ymax, xmax], label, difficult)]."""
    rows = list(zip(*boxes)) if boxes else [[], [], [], []]
    return Annotations(
        source="test", class_names=class_names, image_ids=[i[0] for i in images],
        widths=np.array([i[1] for i in images]), heights=np.array([i[2] for i in images]),
        box_image=np.array(rows[0], np.int64), boxes=np.array(rows[1], np.float64).reshape(-1, 4),
        labels=np.array(rows[2], np.int64), difficult=np.array(rows[3], bool),
        crowd=np.zeros(len(boxes), bool), image_refs=[None] * len(images))


CLEAN_IMAGES = [("a", 200, 100), ("b", 100, 100), ("c", 300, 150)]
CLEAN_BOXES = [
    (0, [0.1, 0.1, 0.6, 0.3], 1, False),     # 40 x 50 px
    (0, [0.1, 0.5, 0.6, 0.7], 1, False),     # same size, beside it (IoU 0)
    (0, [0.2, 0.2, 0.7, 0.4], 2, True),      # overlaps box 0 a lot, but another class
    (1, [0.0, 0.0, 0.5, 0.5], 1, False),     # 50 x 50 px
    (1, [0.05, 0.0, 0.5, 0.5], 1, False),    # same class, IoU 0.9: a crowd of poles, not a duplicate
    (2, [0.3, 0.3, 0.9, 0.5], 2, False),     # 60 x 90 px
]


def test_clean_set_has_no_findings_and_hand_checked_statistics():
    clean = table(CLEAN_IMAGES, CLEAN_BOXES)
    assert lint.find_suspicious(clean, TINY_SIDE) == []
    stats = lint.statistics(clean)
    assert (stats["images"], stats["boxes"], stats["difficult"], stats["crowd"]) == (3, 6, 1, 0)
    assert stats["images_without_boxes"] == 0
    assert stats["boxes_per_image"]["mean"] == 2 and stats["boxes_per_image"]["max"] == 3
    assert stats["boxes_per_image"]["histogram"][:4] == [0, 1, 1, 1]
    pole, sign = stats["classes"]["pole"], stats["classes"]["sign"]
    assert (pole["images"], pole["boxes"], pole["difficult"]) == (2, 4, 0)
    assert (sign["images"], sign["boxes"], sign["difficult"]) == (2, 2, 1)
    # pole widths in px: 40, 40, 50, 50 -> median 45; heights 50, 50, 50, 45 -> median 50.
    assert pole["width_px"]["p50"] == approx(45) and pole["height_px"]["p50"] == approx(50)
    assert pole["width_px"]["p0"] == approx(40) and pole["width_px"]["p100"] == approx(50)
    # sign: 40x50 (h/w 1.25) and 60x90 (1.5); areas 2000 and 5400 px.
    assert sign["aspect_h_over_w"]["p50"] == approx(1.375)
    assert sign["area_px"]["p0"] == approx(2000) and sign["area_px"]["p100"] == approx(5400)
    assert stats["overall"]["area"]["p100"] == approx(0.25)


def test_every_planted_defect_is_found_and_nothing_else():
    images = CLEAN_IMAGES + [("dup", 100, 100), ("tiny", 400, 400), ("whole", 120, 80), ("empty", 64, 64),
                             ("thin", 500, 100)]
    boxes = CLEAN_BOXES + [
        (3, [0.1, 0.1, 0.5, 0.5], 2, False),
        (3, [0.1, 0.1, 0.5, 0.51], 2, False),     # the same sign twice: IoU 0.16 / 0.164 = 0.976
        (4, [0.5, 0.5, 0.55, 0.55], 1, False),     # 20 x 20 px of 400: 0.05 < 0.0707
        (4, [0.1, 0.1, 0.3, 0.3], 1, False),       # 80 x 80 px: fine
        (5, [0.0, 0.0, 1.0, 1.0], 1, False),       # the whole image
        (7, [0.1, 0.1, 0.9, 0.12], 2, False),      # 10 x 80 px: h/w 8 (under the extreme 10)
        (7, [0.1, 0.5, 0.95, 0.51], 2, False),     # 5 x 85 px: h/w 17
    ]
    findings = lint.find_suspicious(table(images, boxes), TINY_SIDE)
    found = [(f.kind, f.image_id, f.boxes) for f in findings]
    assert found == [("duplicate", "dup", (6, 7)), ("tiny", "tiny", (8,)), ("whole_image", "whole", (10,)),
                     ("empty_image", "empty", ()), ("extreme_aspect", "thin", (12,))]
    assert "IoU 0.976" in findings[0].detail
    assert lint.count_by_kind(findings) == {"duplicate": 1, "tiny": 1, "whole_image": 1, "empty_image": 1,
                                            "extreme_aspect": 1, "invalid": 0}
    # The contact sheet takes each kind in turn.
    assert [f.kind for f in lint.for_review(findings + findings, 3)] == ["duplicate", "tiny", "whole_image"]


def test_invalid_boxes_and_crowd_boxes():
    images = [("x", 100, 100)]
    boxes = [(0, [0.5, 0.5, 0.4, 0.6], 1, False),     # inverted
             (0, [0.1, 0.1, 1.2, 0.5], 1, False),     # outside the image
             (0, [np.nan, 0.1, 0.2, 0.2], 1, False),
             (0, [0.0, 0.0, 1.0, 1.0], 2, False)]     # a whole-image box, but crowd: not linted
    crowd_table = table(images, boxes)
    crowd_table.crowd[3] = True
    found = [(f.kind, f.boxes) for f in lint.find_suspicious(crowd_table, TINY_SIDE)]
    assert found == [("invalid", (0,)), ("invalid", (1,)), ("invalid", (2,))]
    assert lint.statistics(crowd_table)["crowd"] == 1


def test_no_boxes_at_all():
    empty = table([("e", 10, 10)], [])
    assert [(f.kind, f.image_id) for f in lint.find_suspicious(empty, TINY_SIDE)] == [("empty_image", "e")]
    stats = lint.statistics(empty)
    assert stats["boxes"] == 0 and stats["overall"]["width_px"] is None
