"""Synthetic data shared by the benchmarks: a VOC-like image set and an SSD-like detection set.

make_voc_like: 500x375 JPEGs of quality 90 (a smooth colour texture with grain, so they compress like
photos), 1-5 boxes each, the VOC layout with ImageSets/Main/trainval.txt.

make_image: one evaluation image's ground truth and detections: 20 classes, on average 3 ground truths
(10% difficult), 30% of the detections jittered copies of a ground truth (mostly its class, scores
skewed high), the rest random boxes of random classes with low scores, the mix an SSD with score
threshold 0.01 and 200 detections per image produces.
"""

import io
import os

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 500, 375     # the most common VOC image size
JPEG_QUALITY = 90
NUM_SHARDS = 8
_CLASSES = ("cat", "dog", "person")


def _textured(rng):
    """Smooth colour texture with grain: compresses like a photo (tens of KB), not like noise."""
    small = rng.integers(0, 255, (HEIGHT // 25, WIDTH // 25, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC), np.int16)
    return np.clip(base + rng.integers(-8, 9, (HEIGHT, WIDTH, 1)), 0, 255).astype(np.uint8)


def make_voc_like(root, count, seed=0, boxes_per_image=None):
    """Write `count` images and annotations under root/VOC (VOC layout); returns that path.

    Each image has 1-5 random boxes, or exactly `boxes_per_image` when given.
    """
    rng = np.random.default_rng(seed)
    voc_dir = os.path.join(root, "VOC")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc_dir, sub))
    ids = ["%06d" % i for i in range(count)]
    for image_id in ids:
        out = io.BytesIO()
        Image.fromarray(_textured(rng)).save(out, format="JPEG", quality=JPEG_QUALITY)
        with open(os.path.join(voc_dir, "JPEGImages", image_id + ".jpg"), "wb") as f:
            f.write(out.getvalue())
        objects = []
        for _ in range(boxes_per_image or int(rng.integers(1, 6))):
            x0, x1 = np.sort(rng.integers(1, WIDTH + 1, 2))
            y0, y1 = np.sort(rng.integers(1, HEIGHT + 1, 2))
            objects.append("<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>"
                           "<difficult>0</difficult><bndbox><xmin>%d</xmin><ymin>%d</ymin><xmax>%d"
                           "</xmax><ymax>%d</ymax></bndbox></object>" % (
                               _CLASSES[int(rng.integers(3))], x0, y0, x1 + 1, y1 + 1))
        with open(os.path.join(voc_dir, "Annotations", image_id + ".xml"), "w") as f:
            f.write("<annotation><filename>%s.jpg</filename><size><width>%d</width><height>%d"
                    "</height><depth>3</depth></size>%s</annotation>" % (
                        image_id, WIDTH, HEIGHT, "".join(objects)))
    with open(os.path.join(voc_dir, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.writelines(i + "\n" for i in ids)
    return voc_dir


NUM_CLASSES = 20  # PASCAL VOC
MEAN_GTS_PER_IMAGE = 3.0
DIFFICULT_FRACTION = 0.1
NEAR_GT_FRACTION = 0.3
BOX_JITTER = 0.05  # normalized, per coordinate (std)


def _random_boxes(rng, n):
    """[n, 4] normalized yxyx boxes with sides in [0.05, 0.6]."""
    size = rng.uniform(0.05, 0.6, size=(n, 2))
    corner = rng.uniform(0.0, 1.0, size=(n, 2)) * (1.0 - size)
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


def make_image(rng, detections_per_image):
    """One synthetic image: (height, width, gt boxes, labels, difficult, det boxes, scores, classes)."""
    height, width = int(rng.integers(300, 501)), int(rng.integers(300, 501))
    num_gt = max(1, int(rng.poisson(MEAN_GTS_PER_IMAGE)))
    gt_boxes = _random_boxes(rng, num_gt)
    gt_labels = rng.integers(1, NUM_CLASSES + 1, size=num_gt)
    difficult = rng.random(num_gt) < DIFFICULT_FRACTION

    num_near = int(detections_per_image * NEAR_GT_FRACTION)
    source = rng.integers(0, num_gt, size=num_near)
    near = np.clip(gt_boxes[source] + rng.normal(0, BOX_JITTER, size=(num_near, 4)), 0.0, 1.0)
    near = np.concatenate([np.minimum(near[:, :2], near[:, 2:]), np.maximum(near[:, :2], near[:, 2:])], 1)
    near_classes = np.where(rng.random(num_near) < 0.8, gt_labels[source],
                            rng.integers(1, NUM_CLASSES + 1, size=num_near))
    num_far = detections_per_image - num_near
    det_boxes = np.concatenate([near, _random_boxes(rng, num_far)]).astype(np.float32)
    det_scores = np.concatenate([rng.beta(5, 2, size=num_near), rng.beta(1, 8, size=num_far)])
    det_classes = np.concatenate([near_classes, rng.integers(1, NUM_CLASSES + 1, size=num_far)])
    order = np.argsort(-det_scores, kind="stable")  # post-processing hands them sorted
    return (height, width, gt_boxes, gt_labels, difficult,
            det_boxes[order], det_scores[order].astype(np.float32), det_classes[order])
