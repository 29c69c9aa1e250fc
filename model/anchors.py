"""Default boxes (anchors, Caffe "priors"): one pure function of the model config.

Contract (DESIGN.md, stated here once):

* Output: float32 numpy array [A, 4], boxes [ymin, xmin, ymax, xmax] normalized by
  `config.image_size`. Anchors are NOT clipped to [0, 1] (Caffe `clip: false` in ssd_pascal.py), so
  border anchors extend past the image.
* Order, outermost first: feature map (in `config.feature_maps` order, largest map first), then row i,
  then column j, then box spec. This is the order of a head's [B, H, W, boxes*k] output reshaped to
  [B, H*W*boxes, k] and concatenated over maps; the nets tests prove the heads agree with it.
* Per location, the Caffe PriorBoxLayer order (boxes_per_location = 2 + 2*len(aspect_ratios)):
    1. the min_size square,
    2. the sqrt(min_size * max_size) square (paper §2.2: the extra scale s'_k = sqrt(s_k s_{k+1})),
    3. for each aspect ratio r, the pair (r, 1/r), where ratio r means
       width = min_size * sqrt(r), height = min_size / sqrt(r) (wide for r > 1).
* Sizes: with `config.integer_prior_sizes` (the VGG presets) min_size and max_size are truncated to
  whole pixels first, as Caffe's PriorBoxLayer does (`int min_size_ = min_sizes_[s]`,
  src/caffe/layers/prior_box_layer.cpp): SSD512's 35.84 acts as 35, 76.8 as 76, and the second square
  is sqrt(35 * 76). SSD300's sizes are whole numbers already.
* Centre of cell (i, j): ((i + 0.5) * step, (j + 0.5) * step) / image_size (Caffe `offset: 0.5`,
  steps from ssd_pascal.py rather than image_size / size, which differ for e.g. 300/38).

Clipping (`config.anchor_clip`, one of ANCHOR_CLIPS):
* "none": Caffe's `clip: false`, the VGG presets.
* "center_size", the MLPerf ResNet34 preset: the MLPerf reference
(mlcommons/training single_stage_detector/ssd/utils.py, DefaultBoxes) builds its boxes as
(cx, cy, w, h) with cx = (j + 0.5) / fk, fk = fig_size / step -- the same centre as Caffe's
(j + 0.5) * step / image_size -- and clamps THAT centre-size form to [0, 1] (`dboxes.clamp_(0, 1)`)
before converting to corners. So sizes above 1 shrink (the 1x1 map's ratio-2 boxes become 1 wide), and
so do centres beyond the image: the 10x10 map's step 32 puts its last row and column at 9.5 * 32 = 304
px, clamped to 300. Corners of border boxes still extend past the image. Its per-map order is
box spec outermost (for each size, every location); ours keeps the DESIGN.md order (box spec innermost,
matching our heads' reshape), the same set of boxes permuted within each map.
* "size", torchvision's DefaultBoxGenerator(clip=True) (torchvision/models/detection/anchor_utils.py):
  it clamps only the (w, h) pairs to [0, 1] before adding the centres, so centres past the image stay
  (SSD300's 10x10 map keeps its last row and column at 304/300) while no box is wider or taller than
  the image.
"""

import math

import numpy as np

# Caffe PriorBox `offset`: anchor centres sit in the middle of their cell.
CELL_CENTER_OFFSET = 0.5


def prior_sizes(feature_map, integer_sizes):
    """(min_size, max_size) in pixels as the anchors use them: truncated to int with `integer_sizes`."""
    if integer_sizes:
        return int(feature_map.min_size), int(feature_map.max_size)   # C++ float -> int: towards zero
    return feature_map.min_size, feature_map.max_size


def _box_sizes(feature_map, integer_sizes):
    """Per-location (height, width) pairs in pixels, in the Caffe order above: [boxes_per_location, 2]."""
    min_size, max_size = prior_sizes(feature_map, integer_sizes)
    square_between = math.sqrt(min_size * max_size)
    sizes = [(min_size, min_size), (square_between, square_between)]
    for ratio in feature_map.aspect_ratios:
        root = math.sqrt(ratio)
        sizes.append((min_size / root, min_size * root))   # ratio r: wide box
        sizes.append((min_size * root, min_size / root))   # ratio 1/r: tall box
    return np.asarray(sizes, dtype=np.float64)


def _feature_map_anchors(feature_map, image_size, integer_sizes):
    """Anchors of one feature map, [size * size * boxes_per_location, 4] float64 normalized yxyx."""
    cells = (np.arange(feature_map.size, dtype=np.float64) + CELL_CENTER_OFFSET) * feature_map.step
    center_y, center_x = np.meshgrid(cells, cells, indexing="ij")          # [rows, cols]
    sizes = _box_sizes(feature_map, integer_sizes)                        # [k, 2] (h, w)
    # [rows, cols, k]: the box spec varies fastest, then column, then row.
    half_h = np.broadcast_to(sizes[:, 0] / 2.0, center_y.shape + (len(sizes),))
    half_w = np.broadcast_to(sizes[:, 1] / 2.0, center_y.shape + (len(sizes),))
    cy = center_y[..., None]
    cx = center_x[..., None]
    boxes = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)  # [rows, cols, k, 4]
    return boxes.reshape(-1, 4) / image_size                                         # [rows*cols*k, 4]


ANCHOR_CLIPS = ("none", "center_size", "size")


def _clip(boxes, mode):
    """[N, 4] yxyx clipped as `mode` says (module docstring): centre and/or size clamped to [0, 1]."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    size = boxes[:, 2:] - boxes[:, :2]
    if mode == "center_size":
        center = np.clip(center, 0.0, 1.0)
    size = np.clip(size, 0.0, 1.0)
    return np.concatenate([center - size / 2.0, center + size / 2.0], axis=1)


def generate(config):
    """All anchors of `config` (an SSDConfig): float32 [config.num_anchors, 4] normalized yxyx."""
    per_map = [_feature_map_anchors(fm, config.image_size, config.integer_prior_sizes)
               for fm in config.feature_maps]
    anchors = np.concatenate(per_map, axis=0)
    if config.anchor_clip not in ANCHOR_CLIPS:
        raise ValueError(f"unknown anchor_clip {config.anchor_clip!r}; known: {', '.join(ANCHOR_CLIPS)}")
    if config.anchor_clip != "none":
        anchors = _clip(anchors, config.anchor_clip)
    anchors = anchors.astype(np.float32)
    if anchors.shape[0] != config.num_anchors:
        raise AssertionError(f"generated {anchors.shape[0]} anchors, config says {config.num_anchors}")
    return anchors
