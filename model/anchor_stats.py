"""How well a preset's anchors can match a dataset's boxes, and anchors fitted to a dataset (numpy).

Coverage is measured the way training matches (model/matcher.py, paper §2.2): a ground-truth box whose
best anchor has IoU >= the match threshold is *covered* (that anchor, and usually its neighbours, become
positives by the threshold rule); a box below it is trained only through the forced match, one anchor
of low IoU whose regression target is far from the anchor. Boxes here are normalized
[ymin, xmin, ymax, xmax] of the image, which is also the net input's frame: the input is the image
resized to S x S, so a box's shape in the net is its normalized shape times S, not its pixel shape.

Two ways to get the best IoU per box, which agree to float precision (tests/test_anchor_stats.py):

* `best_anchor_iou(boxes, anchors)`: brute force against any anchor array (model.anchors.generate).
* `grid_best_iou(boxes, config)`: exact for the unclipped Caffe grid (DESIGN.md: Anchors), 300x (SSD300)
  to 1,250x (SSD512) faster (benchmarks/anchor_fit.py). IoU of two boxes with fixed sizes is
  non-increasing in |dy| and in |dx| separately (intersection height depends on dy only, width on dx
  only), so over a feature map's grid the best anchor of each box spec sits at the cell centre nearest
  the box centre in each axis. That leaves boxes x (box specs of all maps), 30 for SSD300, instead
  of boxes x 8,732 IoUs.

`fit_anchors` keeps every feature map's layer, grid size, step and number of aspect ratios (so the
boxes per cell, the heads and the parameter count stay) and searches min sizes, max sizes and aspect
ratios for the highest coverage: a deterministic coordinate search in log space with data-seeded
moves, on at most `max_boxes` boxes drawn with `seed`.
"""

import dataclasses
import math

import numpy as np

from model import anchors as anchors_lib

# Size buckets of sqrt(box area) in net-input pixels (edges; the last bucket is open).
SIZE_BUCKET_EDGES_PX = (16, 32, 64, 128, 256)
IOU_HISTOGRAM_BINS = 10            # best-IoU histogram over [0, 1] in steps of 0.1
# The search maximises coverage + TIEBREAK * mean best IoU: the mean only decides between candidates
# of equal coverage (one more covered box in 1,000 outweighs a 0.1 rise of the mean), which gives the
# search a slope where coverage alone is flat.
TIEBREAK = 0.01
# Bounds of the search (net-input pixels; aspect ratios r >= 1, each gives the pair r and 1/r).
MIN_SIZE_BOUNDS_PX = (4.0, 600.0)
MAX_RATIO = 16.0
LOG_STEPS = (0.4, 0.2, 0.1, 0.05, 0.025)   # coordinate steps in log space, coarse to fine
DATA_MOVES_PER_MAP = 12                     # min size and one ratio taken from random boxes
MAX_PASSES_PER_STEP = 6


def pairwise_iou(boxes_a, boxes_b):
    """IoU of every pair: boxes_a [N, 4], boxes_b [M, 4] (yxyx) -> [N, M] float64; empty unions give 0."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)[:, None, :]    # [N, 1, 4]
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)[None, :, :]    # [1, M, 4]
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_anchor_iou(boxes, anchors, chunk=512):
    """Best IoU over all anchors per box, and that anchor's index: boxes [G, 4], anchors [A, 4] ->
    ([G] float64, [G] int64). Ties go to the lowest anchor index (as the matcher's forced claim)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    best = np.zeros(len(boxes))
    index = np.zeros(len(boxes), np.int64)
    for start in range(0, len(boxes), chunk):
        iou = pairwise_iou(boxes[start:start + chunk], anchors)        # [chunk, A]
        index[start:start + chunk] = np.argmax(iou, axis=1)
        best[start:start + chunk] = iou[np.arange(len(iou)), index[start:start + chunk]]
    return best, index


def _box_specs(min_size, max_size, aspect_ratios):
    """(heights, widths) in pixels of one map's box specs, in model/anchors.py's Caffe order: [k] each."""
    sizes = [(min_size, min_size), (math.sqrt(min_size * max_size),) * 2]
    for ratio in aspect_ratios:
        root = math.sqrt(ratio)
        sizes += [(min_size / root, min_size * root), (min_size * root, min_size / root)]
    sizes = np.asarray(sizes, np.float64)
    return sizes[:, 0], sizes[:, 1]


def _overlap(half, offset, anchor_half):
    """Overlap of the intervals [-half, half] and [offset - anchor_half, offset + anchor_half]."""
    return np.clip(np.minimum(half, offset + anchor_half) - np.maximum(-half, offset - anchor_half), 0, None)


class _Boxes:
    """Boxes in net-input pixels, prepared once: centres, sizes, areas ([G] each). The search runs in
    float32 (half the memory traffic; IoUs within 1e-6 of float64), the reports in float64."""

    def __init__(self, boxes, image_size, dtype=np.float64):
        b = (np.asarray(boxes, np.float64).reshape(-1, 4) * image_size).astype(dtype)
        self.cy, self.cx = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        self.h, self.w = np.clip(b[:, 2] - b[:, 0], 0, None), np.clip(b[:, 3] - b[:, 1], 0, None)
        self.area = self.h * self.w
        self._offsets = {}

    def offsets(self, size, step):
        """|dy|, |dx| to the nearest of the grid's cell centres (i + 0.5) * step, i in [0, size)."""
        key = (size, step)
        if key not in self._offsets:
            def nearest(c):
                i = np.clip(np.floor(c / step), 0, size - 1)
                return np.abs(c - (i + 0.5) * step).astype(c.dtype)
            self._offsets[key] = (nearest(self.cy)[:, None], nearest(self.cx)[:, None])   # [G, 1]
        return self._offsets[key]


def _map_best(prepared, size, step, min_size, max_size, aspect_ratios):
    """Best IoU per box over one feature map's anchors: [G]."""
    heights, widths = (v.astype(prepared.h.dtype)
                       for v in _box_specs(min_size, max_size, aspect_ratios))  # [k] each
    dy, dx = prepared.offsets(size, step)                                       # [G, 1]
    inter = (_overlap(prepared.h[:, None] / 2, dy, heights / 2) *
             _overlap(prepared.w[:, None] / 2, dx, widths / 2))                 # [G, k]
    union = prepared.area[:, None] + heights * widths - inter
    return np.max(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), axis=1)


def grid_best_iou(boxes, config):
    """Best IoU per box [G] over the anchors of `config` (exact for unclipped grid anchors)."""
    prepared = _Boxes(boxes, config.image_size)
    if not len(prepared.area):
        return np.zeros(0)
    return np.max([_map_best(prepared, fm.size, fm.step, *anchors_lib.prior_sizes(fm, config.integer_prior_sizes),
                             fm.aspect_ratios)
                   for fm in config.feature_maps], axis=0)


def uncoverable_side(config, threshold):
    """Normalized sqrt(area) under which no anchor of `config` can reach IoU `threshold` with a box.

    Every anchor has area >= the smallest min size squared (ratio boxes keep their min size's area,
    the sqrt(min*max) square is larger, min sizes grow with depth), and IoU <= box area / anchor area.
    """
    smallest = min(anchors_lib.prior_sizes(fm, config.integer_prior_sizes)[0] for fm in config.feature_maps)
    return smallest * math.sqrt(threshold) / config.image_size


def size_bucket_names(edges=SIZE_BUCKET_EDGES_PX):
    return ([f"<{edges[0]}"] + [f"{lo}-{hi}" for lo, hi in zip(edges[:-1], edges[1:])]
            + [f">={edges[-1]}"])


def size_buckets(boxes, image_size, edges=SIZE_BUCKET_EDGES_PX):
    """Bucket index per box [G] of sqrt(area) in net-input pixels: 0 for < edges[0], ... len(edges)."""
    prepared = _Boxes(boxes, image_size)
    return np.searchsorted(np.asarray(edges, np.float64), np.sqrt(prepared.area), side="right")


def _share(covered, total):
    return float(covered) / total if total else None


def coverage_report(best_iou, boxes, labels, class_names, image_size, threshold):
    """Coverage numbers of best IoUs [G] for boxes [G, 4] with labels [G] (1..C), as a JSON-ready dict:

    coverage (share of boxes with best IoU >= threshold), mean and median best IoU, the best-IoU
    histogram (counts per 0.1), and {boxes, covered, coverage} per size bucket and per class.
    """
    best_iou = np.asarray(best_iou, np.float64)
    labels = np.asarray(labels).reshape(-1)
    covered = best_iou >= threshold
    buckets = size_buckets(boxes, image_size)
    by_size = {}
    for i, name in enumerate(size_bucket_names()):
        mask = buckets == i
        by_size[name] = {"boxes": int(mask.sum()), "covered": int(covered[mask].sum()),
                         "coverage": _share(covered[mask].sum(), mask.sum())}
    by_class = {}
    for class_id, name in enumerate(class_names, start=1):
        mask = labels == class_id
        by_class[name] = {"boxes": int(mask.sum()), "covered": int(covered[mask].sum()),
                          "coverage": _share(covered[mask].sum(), mask.sum())}
    histogram, _ = np.histogram(np.clip(best_iou, 0, 1), bins=IOU_HISTOGRAM_BINS, range=(0, 1))
    return {
        "threshold": threshold,
        "boxes": int(len(best_iou)),
        "covered": int(covered.sum()),
        "coverage": _share(covered.sum(), len(best_iou)),
        "forced_only": int((~covered).sum()),
        "mean_best_iou": float(best_iou.mean()) if len(best_iou) else None,
        "median_best_iou": float(np.median(best_iou)) if len(best_iou) else None,
        "best_iou_histogram": [int(c) for c in histogram],
        "by_size": by_size,
        "by_class": by_class,
    }


@dataclasses.dataclass
class _MapParams:
    """Search state of one feature map, in log space: log min size, log(max/min) > 0, log ratios >= 0."""
    log_min: float
    log_gap: float
    log_ratios: list

    def values(self):
        return (math.exp(self.log_min), math.exp(self.log_min + self.log_gap),
                tuple(math.exp(r) for r in self.log_ratios))


def _clip_params(p):
    lo, hi = (math.log(v) for v in MIN_SIZE_BOUNDS_PX)
    return _MapParams(min(max(p.log_min, lo), hi), min(max(p.log_gap, 0.01), math.log(4.0)),
                      [min(max(r, 0.0), math.log(MAX_RATIO)) for r in p.log_ratios])


def _rounded(p):
    """Whole-pixel sizes (Caffe PriorBox reads min/max sizes as int, DESIGN.md), ratios to 0.01."""
    min_size, max_size, ratios = p.values()
    min_size = float(round(min_size))
    max_size = float(max(round(max_size), min_size + 1))
    return min_size, max_size, tuple(max(1.0, round(r, 2)) for r in ratios)


def fit_anchors(boxes, config, threshold=None, seed=0, max_boxes=50000, progress=None):
    """Anchor settings for `boxes` [G, 4] on `config`'s feature maps, maximising coverage.

    Returns (fitted config, info dict with coverage and mean best IoU before and after on the boxes
    searched). Feature map sources, sizes, steps and the number of aspect ratios of each map are kept;
    min sizes stay non-decreasing from the largest map to the smallest (deeper layers see larger
    objects, paper §2.2). The result is never worse than the start: when the rounded fit does not
    beat the preset, the preset is returned. `progress(step_index, num_steps, coverage)` is called
    after each coarse-to-fine step.
    """
    threshold = config.match_threshold if threshold is None else threshold
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        raise ValueError("no boxes to fit anchors to")
    rng = np.random.default_rng(seed)
    if len(boxes) > max_boxes:
        boxes = boxes[np.sort(rng.choice(len(boxes), max_boxes, replace=False))]
    prepared = _Boxes(boxes, config.image_size, np.float32)
    maps = config.feature_maps

    def score(best):
        return float(np.mean(best >= threshold) + TIEBREAK * np.mean(best))

    def evaluate(k, p):
        min_size, max_size, ratios = p.values()
        return _map_best(prepared, maps[k].size, maps[k].step, min_size, max_size, ratios)

    def monotone(params):
        mins = [p.log_min for p in params]
        return all(b >= a - 1e-12 for a, b in zip(mins, mins[1:]))

    params = [_MapParams(math.log(fm.min_size), math.log(fm.max_size / fm.min_size),
                         [math.log(r) for r in fm.aspect_ratios]) for fm in maps]
    keep_order = monotone(params)   # a start that is not ordered (a user's file) is not forced to be
    per_map = np.stack([evaluate(k, p) for k, p in enumerate(params)])      # [M, G]
    current = score(per_map.max(axis=0))

    def try_map(k, candidate, others):
        nonlocal current
        candidate = _clip_params(candidate)
        trial = params[:k] + [candidate] + params[k + 1:]
        if keep_order and not monotone(trial):
            return False
        best_k = evaluate(k, candidate)
        value = score(np.maximum(others, best_k))
        if value > current + 1e-12:
            params[k], per_map[k], current = candidate, best_k, value
            return True
        return False

    def others_of(k):
        return np.delete(per_map, k, axis=0).max(axis=0) if len(maps) > 1 else np.zeros(len(boxes))

    box_log_side = 0.5 * np.log(np.maximum(prepared.area, 1e-12))
    box_log_aspect = np.abs(np.log(np.maximum(prepared.h, 1e-12) / np.maximum(prepared.w, 1e-12)))
    for step_index, step in enumerate(LOG_STEPS):
        # Data moves: a map's min size (and one ratio) set from a random box, as k-means would seed.
        for k in range(len(maps)):
            others = others_of(k)
            for _ in range(DATA_MOVES_PER_MAP):
                g = int(rng.integers(len(boxes)))
                p = params[k]
                ratios = list(p.log_ratios)
                if ratios:
                    ratios[int(rng.integers(len(ratios)))] = box_log_aspect[g]
                if try_map(k, _MapParams(box_log_side[g], p.log_gap, ratios), others):
                    others = others_of(k)
        for _ in range(MAX_PASSES_PER_STEP):
            improved = False
            for k in range(len(maps)):
                others = others_of(k)
                for field in range(2 + len(params[k].log_ratios)):
                    for sign in (1.0, -1.0):
                        p = params[k]
                        values = [p.log_min, p.log_gap] + list(p.log_ratios)
                        values[field] += sign * step
                        if try_map(k, _MapParams(values[0], values[1], values[2:]), others):
                            improved = True
                            break
            if not improved:
                break
        if progress:
            progress(step_index + 1, len(LOG_STEPS), float(np.mean(per_map.max(axis=0) >= threshold)))

    fitted_maps = tuple(dataclasses.replace(fm, min_size=mn, max_size=mx, aspect_ratios=r)
                        for fm, (mn, mx, r) in zip(maps, (_rounded(p) for p in params)))
    fitted = dataclasses.replace(config, feature_maps=fitted_maps)
    before, after = grid_best_iou(boxes, config), grid_best_iou(boxes, fitted)
    if score(after) <= score(before):
        fitted, after = config, before
    info = {"boxes_searched": int(len(boxes)), "seed": seed, "threshold": threshold,
            "coverage_before": float(np.mean(before >= threshold)),
            "coverage_after": float(np.mean(after >= threshold)),
            "mean_best_iou_before": float(np.mean(before)), "mean_best_iou_after": float(np.mean(after))}
    return fitted, info


def anchor_config_dict(config):
    """The anchor file content for `config` (what engine/anchor_file.py writes and presets reads)."""
    return {"preset": config.name, "image_size": config.image_size,
            "feature_maps": [{"source": fm.source, "size": fm.size, "step": fm.step,
                              "min_size": fm.min_size, "max_size": fm.max_size,
                              "aspect_ratios": list(fm.aspect_ratios)} for fm in config.feature_maps]}
