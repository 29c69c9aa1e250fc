"""Ports of Caffe SSD's reference rules (weiliu89/caffe, branch ssd), loop for loop from the C++.

For tests/reference/reference_equivalence.py only (no Caffe build exists here): src/caffe/layers/prior_box_layer.cpp
(Forward_cpu), src/caffe/util/bbox_util.cpp (MatchBBox with PER_PREDICTION, JaccardOverlap, DecodeBBox
CENTER_SIZE, ApplyNMSFast) and src/caffe/layers/detection_output_layer.cpp (per-class NMS, keep_top_k).
Our own port: it is the reference only as far as it is faithful. Boxes are yxyx (Caffe stores xyxy).
"""

import math

import numpy as np

VARIANCES = (0.1, 0.1, 0.2, 0.2)


def prior_boxes(config):
    """PriorBoxLayer::Forward_cpu for every feature map: [A, 4] yxyx float32 (Caffe stores xyxy)."""
    f32 = np.float32
    out = []
    for fm in config.feature_maps:
        ratios = [1.0]
        for r in fm.aspect_ratios:                    # LayerSetUp with flip: true
            ratios += [float(f32(r)), float(f32(1.0) / f32(r))]
        img = config.image_size
        step = f32(fm.step)
        for h in range(fm.size):
            for w in range(fm.size):
                cx = f32(f32(w + 0.5) * step)         # float center_x = (w + offset_) * step_w
                cy = f32(f32(h + 0.5) * step)
                min_size = int(f32(fm.min_size))      # int min_size_ = min_sizes_[s]
                max_size = int(f32(fm.max_size))
                sizes = [(min_size, min_size)]
                between = f32(math.sqrt(min_size * max_size))
                sizes.append((between, between))
                for ar in ratios[1:]:
                    sizes.append((f32(min_size * math.sqrt(ar)), f32(min_size / math.sqrt(ar))))  # (w, h)
                for bw, bh in sizes:
                    out.append([(cy - bh / 2.) / img, (cx - bw / 2.) / img,
                                (cy + bh / 2.) / img, (cx + bw / 2.) / img])
    return np.asarray(out, np.float32)


def jaccard(box, boxes):
    """JaccardOverlap (normalized: no +1), one yxyx box against [N, 4] boxes, float32."""
    box, boxes = box.astype(np.float32), boxes.astype(np.float32)
    ih = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iw = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, np.float32(0))
    area = lambda b: np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(inter > 0, inter / union, np.float32(0)).astype(np.float32)


def match_bbox(iou, threshold=0.5):
    """MatchBBox with PER_PREDICTION for one image; iou [G, A] float32. Returns [A] gt index or -1."""
    num_gt, num_anchors = iou.shape
    match = np.full(num_anchors, -1, np.int64)
    overlap_pairs = {a: {g: iou[g, a] for g in range(num_gt) if iou[g, a] > 1e-6}
                     for a in range(num_anchors) if (iou[:, a] > 1e-6).any()}
    pool = list(range(num_gt))
    while pool:
        best_a, best_g, best = -1, -1, -1.0
        for a, pairs in overlap_pairs.items():        # std::map: ascending anchor index
            if match[a] != -1:
                continue
            for g in pool:
                if g in pairs and pairs[g] > best:
                    best_a, best_g, best = a, g, pairs[g]
        if best_a == -1:
            break
        match[best_a] = best_g
        pool.remove(best_g)
    for a, pairs in overlap_pairs.items():
        if match[a] != -1:
            continue
        best_g, best = -1, -1.0
        for g in range(num_gt):
            if g in pairs and pairs[g] >= threshold and pairs[g] > best:
                best_g, best = g, pairs[g]
        match[a] = best_g
    return match


def detection_output(codes, logits, anchors, score_threshold=0.01, nms_threshold=0.45,
                           top_k=400, keep_top_k=200):
    """DetectionOutputLayer for one image: rows (class, score, ymin, xmin, ymax, xmax), score order."""
    f32 = np.float32
    codes, anchors = codes.astype(f32), anchors.astype(f32)
    # DecodeBBox CENTER_SIZE, variance not encoded in target, clip_bbox false.
    ah, aw = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    acy, acx = (anchors[:, 0] + anchors[:, 2]) / f32(2), (anchors[:, 1] + anchors[:, 3]) / f32(2)
    cy = f32(VARIANCES[0]) * codes[:, 0] * ah + acy
    cx = f32(VARIANCES[1]) * codes[:, 1] * aw + acx
    h = np.exp(f32(VARIANCES[2]) * codes[:, 2]) * ah
    w = np.exp(f32(VARIANCES[3]) * codes[:, 3]) * aw
    boxes = np.stack([cy - h / f32(2), cx - w / f32(2), cy + h / f32(2), cx + w / f32(2)], 1).astype(f32)
    shifted = logits - logits.max(axis=1, keepdims=True)
    scores = (np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)).astype(f32)
    kept = []
    for c in range(1, logits.shape[1]):
        candidates = np.flatnonzero(scores[:, c] > score_threshold)          # GetMaxScoreIndex
        candidates = candidates[np.argsort(-scores[candidates, c], kind="stable")][:top_k]
        chosen = []
        for idx in candidates:                                                 # ApplyNMSFast, eta 1
            if all(jaccard(boxes[idx], boxes[[k]])[0] <= nms_threshold for k in chosen):
                chosen.append(idx)
        kept += [(scores[idx, c], c, idx) for idx in chosen]
    kept.sort(key=lambda item: -item[0])
    kept = kept[:keep_top_k]
    return np.array([[c, s, *boxes[idx]] for s, c, idx in kept], np.float64).reshape(-1, 6)
