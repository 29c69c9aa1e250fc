"""torchvision's "ssdlite" training augmentation: RandomIoUCrop, then a horizontal flip; nothing else.

The recipe of torchvision's SSDLite320 (pytorch/vision references/detection/presets.py,
`data_augmentation == "ssdlite"`: RandomIoUCrop(), RandomHorizontalFlip(0.5), to tensor) with
RandomIoUCrop as references/detection/transforms.py implements it. No photometric distortion and no
zoom-out (the "ssd" recipe has both; SSDLite's paper setting drops them for the small model).

RandomIoUCrop, in pixels of the H x W image:
  loop: draw a minimum IoU uniformly from OPTIONS (0, 0.1, 0.3, 0.5, 0.7, 0.9, 1); 1 keeps the image as
  it is. Otherwise up to TRIALS times: new_w = int(W * U(0.3, 1)), new_h = int(H * U(0.3, 1)) (two
  independent scales); reject unless 0.5 <= new_w / new_h <= 2; left = int((W - new_w) * U),
  top = int((H - new_h) * U); reject an empty crop; reject unless some box's centre lies strictly inside;
  reject unless the largest IoU of those boxes with the crop is >= the minimum; else keep those boxes,
  shifted and clamped to the crop, and crop. All trials rejected: draw a new minimum (the loop).

torchvision loops until a round succeeds; a graph needs a bound, so after MAX_ROUNDS failed rounds the
image is kept whole. For an image without boxes that is torchvision's result too (every round but the
"1" option fails, and that option keeps the image whole); with boxes, all MAX_ROUNDS rounds fail only
if the 0.0 option (any crop holding a box centre) fails 40 times in each of them.

Differences to Caffe's crop (preprocessing/geometric.py): the scales of width and height are drawn
independently here (Caffe draws a scale and an aspect ratio); the IoU constraint is checked against the
boxes whose centres are in the crop only; the "0" option still needs a box centre inside; 40 trials.

Same contract as preprocessing.augment.augment (its POLICIES entry "ssdlite"): a pure function of the
stateless seed; uint8 or float32 RGB in, float32 0-255 out; boxes normalized yxyx; the resize to
`output_size` (bilinear, half-pixel centres: torch's F.interpolate(align_corners=False), which
torchvision's GeneralizedRCNNTransform applies) after the crop and flip.
"""

import tensorflow as tf

from preprocessing import geometric

OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)    # RandomIoUCrop sampler_options; >= 1: keep the image
SCALE_RANGE = (0.3, 1.0)                        # min_scale, max_scale of each side
ASPECT_RANGE = (0.5, 2.0)                       # min/max new_w / new_h, pixels
TRIALS = 40
MAX_ROUNDS = 50
FLIP_PROB = 0.5                                 # RandomHorizontalFlip(p=hflip_prob), hflip_prob 0.5


def _iou_with_window(boxes, window):
    """IoU of boxes [N, 4] with windows [T, 4] (both yxyx pixels) -> [T, N]."""
    top_left = tf.maximum(boxes[None, :, :2], window[:, None, :2])
    bottom_right = tf.minimum(boxes[None, :, 2:], window[:, None, 2:])
    intersection = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)      # [T, N]
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])                  # [N]
    window_area = (window[:, 2] - window[:, 0]) * (window[:, 3] - window[:, 1])           # [T]
    return intersection / (box_area[None, :] + window_area[:, None] - intersection)


def _round(image_hw, boxes_px, seed):
    """One round: (option >= 1, any trial passed, window yxyx int32 [4] of the first that did, inside [N])."""
    height, width = tf.cast(image_hw[0], tf.float32), tf.cast(image_hw[1], tf.float32)
    uniforms = tf.random.stateless_uniform([1 + 4 * TRIALS], seed)
    option = tf.gather(tf.constant(OPTIONS, tf.float32),
                       tf.minimum(tf.cast(uniforms[0] * len(OPTIONS), tf.int32), len(OPTIONS) - 1))
    draws = tf.reshape(uniforms[1:], [TRIALS, 4])                         # scale w, scale h, left, top
    low, high = SCALE_RANGE
    new_w = tf.floor(width * (low + (high - low) * draws[:, 0]))         # int(orig_w * r[0])
    new_h = tf.floor(height * (low + (high - low) * draws[:, 1]))
    aspect = new_w / tf.maximum(new_h, 1.0)
    shaped = (new_h > 0) & (new_w > 0) & (aspect >= ASPECT_RANGE[0]) & (aspect <= ASPECT_RANGE[1])
    left = tf.floor((width - new_w) * draws[:, 2])
    top = tf.floor((height - new_h) * draws[:, 3])
    window = tf.stack([top, left, top + new_h, left + new_w], axis=1)   # [T, 4] yxyx pixels
    center_y = 0.5 * (boxes_px[:, 0] + boxes_px[:, 2])                   # [N]
    center_x = 0.5 * (boxes_px[:, 1] + boxes_px[:, 3])
    inside = ((window[:, 1:2] < center_x) & (center_x < window[:, 3:4])
              & (window[:, 0:1] < center_y) & (center_y < window[:, 2:3]))   # [T, N]
    iou = tf.where(inside, _iou_with_window(boxes_px, window), -1.0)    # [T, N]
    best = tf.reduce_max(tf.concat([iou, -tf.ones([TRIALS, 1])], axis=1), axis=1)   # [T]; -1: none inside
    passed = shaped & tf.reduce_any(inside, axis=1) & (best >= option)
    first = tf.argmax(tf.cast(passed, tf.int32), output_type=tf.int32)
    return option >= 1.0, tf.reduce_any(passed), tf.cast(window[first], tf.int32), inside[first]


def draw_iou_crop(image_hw, boxes, seed):
    """RandomIoUCrop's choice for an image of int32 image_hw [2] with normalized boxes [N, 4].

    Returns (window int32 [4]: top, left, bottom, right in pixels; keep bool [N]: boxes kept).
    """
    size = tf.cast(tf.concat([image_hw, image_hw], 0), tf.float32)
    boxes_px = boxes * size                                               # [N, 4] yxyx pixels
    whole = tf.concat([[0, 0], image_hw], 0)
    everything = tf.ones_like(boxes[:, 0], tf.bool)

    def not_done(index, done, window, keep):
        return tf.logical_and(index < MAX_ROUNDS, tf.logical_not(done))

    def body(index, done, window, keep):
        keep_whole, passed, trial_window, inside = _round(
            image_hw, boxes_px, tf.random.experimental.stateless_fold_in(seed, index))
        window = tf.where(keep_whole, whole, tf.where(passed, trial_window, window))
        keep = tf.where(keep_whole, everything, tf.where(passed, inside, keep))
        return index + 1, keep_whole | passed, window, keep

    _, _, window, keep = tf.while_loop(not_done, body, (tf.constant(0), tf.constant(False), whole, everything))
    return window, keep


def crop_boxes(boxes, keep, window, image_hw):
    """Kept normalized boxes moved into the window and clamped to it, normalized to the window: [K, 4]."""
    size = tf.cast(tf.concat([image_hw, image_hw], 0), tf.float32)
    boxes_px = tf.boolean_mask(boxes, keep) * size
    window = tf.cast(window, tf.float32)
    extent = tf.concat([window[2:] - window[:2]] * 2, 0)                 # [h, w, h, w]
    shifted = boxes_px - tf.concat([window[:2], window[:2]], 0)
    return tf.clip_by_value(shifted, 0.0, extent) / extent


def augment(image, boxes, labels, seed, config=None, extras=None, output_size=None):
    """torchvision's "ssdlite" recipe on one image: preprocessing.augment.augment's arguments and results.

    `config` (an AugmentConfig) is accepted for the common signature; only its flip_prob is read (0.5 as
    torchvision). The crop sampler's numbers are this module's constants (torchvision's defaults).
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image_hw = tf.shape(image)[:2]
    window, keep = draw_iou_crop(image_hw, boxes, crop_seed)
    boxes = crop_boxes(boxes, keep, window, image_hw)
    part = tf.cast(tf.slice(image, tf.concat([window[:2], [0]], 0),
                            tf.concat([window[2:] - window[:2], [-1]], 0)), tf.float32)
    flip_prob = FLIP_PROB if config is None else config.flip_prob
    flips = tf.random.stateless_uniform([], flip_seed) < flip_prob
    part, boxes = geometric.flip_left_right(part, boxes, flips)
    if output_size is not None:
        part = tf.image.resize(part, output_size, method="bilinear", antialias=False)
    indices = tf.where(keep)[:, 0]
    labels = tf.gather(labels, indices)
    if extras is None:
        return part, boxes, labels
    return part, boxes, labels, {name: tf.gather(value, indices) for name, value in extras.items()}
