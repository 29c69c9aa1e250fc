"""Dataset statistics and suspicious annotations, on an `Annotations` table (dataset/annotations.py).

`statistics` counts images and boxes per class, boxes per image, difficult and crowd boxes, and gives
width, height, area and aspect distributions (percentiles) overall and per class, in pixels of the
stored image and normalized to it.

`find_suspicious` lists each annotation worth a look, with its image id:

    duplicate       two boxes of one class in one image with IoU > duplicate_iou (0.95): usually the
                    same object annotated twice, which makes one of the two a false positive target
    tiny            sqrt(box area) below `tiny_side` (normalized; analyze_dataset.py passes the
                    smallest anchor's side x sqrt(match threshold) / S: every anchor is at least
                    that large, so IoU <= box area / anchor area < threshold and no anchor can
                    cover the box; only a forced match trains it)
    whole_image     a box covering >= whole_image_area (0.95) of the image: often a placeholder or
                    an image-level label entered as a box
    empty_image     an image without any box (legal, all background; listed so it is a choice)
    extreme_aspect  max(h/w, w/h) in pixels > extreme_aspect (10)
    invalid         a box outside [0, 1], inverted, zero-area or not finite (converters drop these;
                    records from elsewhere may hold them)

Crowd boxes (COCO iscrowd) are counted but not linted: training neither trains nor penalises them.
"""

import dataclasses

import numpy as np

DUPLICATE_IOU = 0.95
WHOLE_IMAGE_AREA = 0.95
EXTREME_ASPECT = 10.0
PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
BOXES_PER_IMAGE_CAP = 20          # the boxes-per-image histogram's last bin is ">= 20"
KINDS = ("duplicate", "tiny", "whole_image", "empty_image", "extreme_aspect", "invalid")


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str                 # one of KINDS
    image_index: int
    image_id: str
    boxes: tuple              # indices into the table's box columns (empty for empty_image)
    detail: str

    def as_dict(self):
        return {"kind": self.kind, "image_id": self.image_id, "boxes": list(self.boxes),
                "detail": self.detail}


def box_shapes(table):
    """Per box: (height px, width px, height normalized, width normalized), each [N] float64."""
    h_norm = table.boxes[:, 2] - table.boxes[:, 0]
    w_norm = table.boxes[:, 3] - table.boxes[:, 1]
    return (h_norm * table.heights[table.box_image], w_norm * table.widths[table.box_image],
            h_norm, w_norm)


def _percentiles(values):
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def _distributions(h_px, w_px, h_norm, w_norm):
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = h_px / w_px
    return {"width_px": _percentiles(w_px), "height_px": _percentiles(h_px),
            "area_px": _percentiles(h_px * w_px), "aspect_h_over_w": _percentiles(aspect),
            "width": _percentiles(w_norm), "height": _percentiles(h_norm),
            "area": _percentiles(h_norm * w_norm)}


def statistics(table):
    """Counts and distributions as a JSON-ready dict (see the module docstring)."""
    h_px, w_px, h_norm, w_norm = box_shapes(table)
    per_image = np.bincount(table.box_image, minlength=table.num_images)
    classes = {}
    for class_id, name in enumerate(table.class_names, start=1):
        mask = table.labels == class_id
        classes[name] = {
            "images": int(len(np.unique(table.box_image[mask]))), "boxes": int(mask.sum()),
            "difficult": int((mask & table.difficult).sum()), "crowd": int((mask & table.crowd).sum()),
            **_distributions(h_px[mask], w_px[mask], h_norm[mask], w_norm[mask])}
    unknown = int((~np.isin(table.labels, np.arange(1, len(table.class_names) + 1))).sum())
    return {
        "images": table.num_images, "boxes": int(len(table.labels)),
        "difficult": int(table.difficult.sum()), "crowd": int(table.crowd.sum()),
        "boxes_with_unknown_class": unknown,
        "images_without_boxes": int((per_image == 0).sum()),
        "boxes_per_image": {
            "mean": float(per_image.mean()) if len(per_image) else None,
            "max": int(per_image.max()) if len(per_image) else None,
            "histogram": [int(c) for c in np.bincount(np.minimum(per_image, BOXES_PER_IMAGE_CAP),
                                                      minlength=BOXES_PER_IMAGE_CAP + 1)]},
        "overall": _distributions(h_px, w_px, h_norm, w_norm),
        "classes": classes,
    }


def _pair_iou(boxes):
    """[K, K] IoU of boxes [K, 4] with themselves."""
    a, b = boxes[:, None, :], boxes[None, :, :]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None) *
             np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def find_suspicious(table, tiny_side, duplicate_iou=DUPLICATE_IOU, whole_image_area=WHOLE_IMAGE_AREA,
                    extreme_aspect=EXTREME_ASPECT):
    """Findings [Finding], ordered by image, then kind (KINDS order), then box."""
    findings = []
    ids = table.image_ids
    boxes = table.boxes
    h_px, w_px, h_norm, w_norm = box_shapes(table)
    linted = ~table.crowd
    finite = np.all(np.isfinite(boxes), axis=1)
    invalid = linted & ~(finite & (h_norm > 0) & (w_norm > 0) & np.all((boxes >= 0) & (boxes <= 1), axis=1))
    valid = linted & ~invalid
    with np.errstate(divide="ignore", invalid="ignore"):
        side = np.sqrt(h_norm * w_norm)
        aspect = np.maximum(h_px / w_px, w_px / h_px)

    def add(kind, n, detail):
        findings.append(Finding(kind, int(table.box_image[n]), ids[table.box_image[n]], (int(n),), detail))

    for n in np.flatnonzero(invalid):
        add("invalid", n, "box %s" % np.round(boxes[n], 4).tolist())
    for n in np.flatnonzero(valid & (side < tiny_side)):
        add("tiny", n, f"{w_px[n]:.1f}x{h_px[n]:.1f} px, sqrt(area) {side[n]:.4f} of the image side "
                       f"< {tiny_side:.4f}")
    for n in np.flatnonzero(valid & (h_norm * w_norm >= whole_image_area)):
        add("whole_image", n, f"covers {100 * h_norm[n] * w_norm[n]:.1f}% of the image")
    for n in np.flatnonzero(valid & (aspect > extreme_aspect)):
        add("extreme_aspect", n, f"{w_px[n]:.1f}x{h_px[n]:.1f} px, aspect {aspect[n]:.1f}:1")
    order = np.argsort(table.box_image, kind="stable")
    starts = np.searchsorted(table.box_image[order], np.arange(table.num_images + 1))
    for image in range(table.num_images):
        members = order[starts[image]:starts[image + 1]]
        if not len(members):
            findings.append(Finding("empty_image", image, ids[image], (), "no boxes"))
            continue
        members = members[valid[members]]
        if len(members) < 2:
            continue
        iou = _pair_iou(boxes[members])
        same_class = table.labels[members][:, None] == table.labels[members][None, :]
        for i, j in zip(*np.nonzero(np.triu(same_class & (iou > duplicate_iou), k=1))):
            findings.append(Finding("duplicate", image, ids[image], (int(members[i]), int(members[j])),
                                    f"IoU {iou[i, j]:.3f}, class id {int(table.labels[members[i]])}"))
    rank = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (f.image_index, rank[f.kind], f.boxes))


def for_review(findings, limit):
    """Up to `limit` findings taken in turn from each kind (KINDS order), so rare kinds are shown too."""
    queues = [[f for f in findings if f.kind == kind] for kind in KINDS]
    chosen = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen


def count_by_kind(findings):
    return {kind: sum(f.kind == kind for f in findings) for kind in KINDS}
