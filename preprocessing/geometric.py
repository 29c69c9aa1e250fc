"""Geometric augmentation: zoom-out ("expand"), the min-IoU crop ("batch sampler") and flip (paper §2.2).

Follows Caffe SSD (ssd_pascal.py `expand_param`, `batch_sampler`, `mirror`; the code in
src/caffe/util/im_transforms.cpp `ExpandImage` and src/caffe/util/sampler.cpp):

* Zoom-out, with probability 0.5: ratio r ~ U[1, 4]; the canvas is floor(H r) x floor(W r), filled with
  the mean pixel, the image pasted at integer offsets floor(U[0, canvas - size]) per axis.
* Crop: every sampler of ssd_pascal.py is tried and one *successful* sample is picked uniformly, as
  Caffe's AnnotatedDataLayer does (`rand_idx = caffe_rng_rand() % sampled_bboxes.size()`). The samplers
  are: the whole image (always succeeds), and six patch samplers with 50 trials each, keeping their
  first trial whose IoU with at least one box is >= 0.1, 0.3, 0.5, 0.7, 0.9, or >= 0 for the last
  (Caffe's `max_jaccard_overlap: 1.0`: no minimum, yet it needs at least one box). An image without
  boxes therefore always keeps the whole image, as in Caffe. A trial patch (SampleBBox) has scale
  s ~ U[0.3, 1] and aspect a ~ U[max(0.5, s^2), min(2, 1/s^2)], width s sqrt(a), height s / sqrt(a),
  all normalized to the (zoomed-out) image, and a uniform offset keeping it inside.
  The trials are drawn all at once ([samplers, trials]) so there is no loop at all.
* Boxes whose centre lies in the patch (edges included, Caffe's EmitConstraint CENTER) are kept,
  clipped to it, and re-normalized to it; boxes left with zero area are dropped (Caffe ProjectBBox).
* Horizontal flip with probability 0.5.

The crop is computed in pixels of the zoomed-out canvas (Caffe CropImage truncates the patch to whole
pixels) and boxes are re-normalized to that pixel window, so image and boxes agree exactly.
`zoom_out_image` then `crop_image` define the result; augment never builds that canvas, which can be
16 times the image: it slices the part of the image in the window (`image_part_in_window`) and pads
it (`pad_with_fill`), equal to canvas -> crop (tested), or goes straight to the resized patch
(`resize_window`), equal to canvas -> crop -> resize away from the image's border with the fill (tested).

Boxes are float32 [N, 4], [ymin, xmin, ymax, xmax] normalized to their image (DESIGN.md).
"""

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from model.box_ops import iou
from model.presets import IMAGENET_MEAN_RGB

WHOLE_IMAGE_PATCH = (0.0, 0.0, 1.0, 1.0)   # normalized [ymin, xmin, ymax, xmax]
_WHOLE_IMAGE_MIN_IOU = 0.0                   # the whole-image sampler has no constraint


@dataclasses.dataclass(frozen=True)
class ZoomOutConfig:
    """ssd_pascal.py expand_param: prob 0.5, max_expand_ratio 4.0; the canvas is mean-filled.

    The training input replaces `fill_rgb` with the model's `config.pixel_mean` (inputs.with_model_fill),
    so a preset with another mean fills with its own; this default serves standalone augmentation.
    """

    prob: float = 0.5
    max_ratio: float = 4.0
    fill_rgb: Tuple[float, float, float] = IMAGENET_MEAN_RGB


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """ssd_pascal.py batch_sampler: the whole image plus one patch sampler per minimum IoU.

    A minimum IoU of 0.0 is the unconstrained patch sampler (needs at least one box, as in Caffe).
    """

    min_ious: Tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
    scale_range: Tuple[float, float] = (0.3, 1.0)     # patch side relative to the image side
    aspect_range: Tuple[float, float] = (0.5, 2.0)    # patch width / height, normalized units
    max_trials: int = 50


# --- zoom-out ---------------------------------------------------------------------------------------

def draw_zoom_out(image_hw, seed, config: ZoomOutConfig = ZoomOutConfig()):
    """Draws a zoom-out: the canvas size and where the image sits on it.

    Args:
      image_hw: int32 [2], the image's height and width.
      seed: int [2].
    Returns:
      canvas_hw int32 [2] and offset_yx int32 [2] (top-left of the image on the canvas). Without
      zoom-out (probability 1 - prob) the canvas is the image: canvas_hw == image_hw, offset 0.
    """
    uniforms = tf.random.stateless_uniform([4], seed)  # applies?, ratio, offset y, offset x
    ratio = tf.where(uniforms[0] < config.prob, 1.0 + (config.max_ratio - 1.0) * uniforms[1], 1.0)
    image_hw_f = tf.cast(image_hw, tf.float32)
    canvas_hw = tf.cast(tf.floor(image_hw_f * ratio), tf.int32)
    slack = tf.cast(canvas_hw - image_hw, tf.float32)
    offset_yx = tf.cast(tf.floor(uniforms[2:] * slack), tf.int32)
    return canvas_hw, offset_yx


def _image_to_canvas_pixels(boxes, image_hw, offset_yx):
    """Normalized boxes of the image [N, 4] -> pixel boxes on the canvas [N, 4]."""
    scale = tf.tile(tf.cast(image_hw, tf.float32), [2])
    shift = tf.tile(tf.cast(offset_yx, tf.float32), [2])
    return boxes * scale + shift


def zoom_out_image(image, canvas_hw, offset_yx, fill_rgb):
    """The image [H, W, 3] pasted at offset_yx on a canvas [canvas_h, canvas_w, 3] filled with fill_rgb."""
    fill = tf.constant(fill_rgb, tf.float32)
    image_hw = tf.shape(image)[:2]
    after = canvas_hw - image_hw - offset_yx
    paddings = tf.stack([tf.stack([offset_yx[0], after[0]]), tf.stack([offset_yx[1], after[1]]), [0, 0]])
    return tf.pad(image - fill, paddings) + fill


# --- crop -------------------------------------------------------------------------------------------

def sample_patch(boxes, seed, config: CropConfig = CropConfig()):
    """Caffe's batch sampler, vectorised: all samplers x all trials drawn at once.

    Args:
      boxes: float32 [N, 4] normalized to the (zoomed-out) image; N may be 0.
      seed: int [2].
    Returns:
      patch float32 [4], normalized [ymin, xmin, ymax, xmax], and min_iou float32 [], the minimum IoU
      of the sampler that produced it (0.0 for the whole image and the unconstrained sampler). Some
      box has IoU >= min_iou with the patch whenever a patch sampler was chosen.
    """
    num_samplers = len(config.min_ious)
    shape = [num_samplers, config.max_trials]
    # One draw: scale, aspect, y offset, x offset for every trial, then a key per candidate.
    num_trial_draws = 4 * num_samplers * config.max_trials
    uniforms = tf.random.stateless_uniform([num_trial_draws + num_samplers + 1], seed)
    trial_uniforms = tf.reshape(uniforms[:num_trial_draws], [4] + shape)
    choice_keys = uniforms[num_trial_draws:]
    min_scale, max_scale = config.scale_range
    scale = min_scale + (max_scale - min_scale) * trial_uniforms[0]
    # Caffe narrows the aspect range so that the patch fits: width and height stay <= 1.
    min_aspect = tf.maximum(config.aspect_range[0], tf.square(scale))
    max_aspect = tf.minimum(config.aspect_range[1], 1.0 / tf.square(scale))
    aspect = min_aspect + (max_aspect - min_aspect) * trial_uniforms[1]
    width = scale * tf.sqrt(aspect)
    height = scale / tf.sqrt(aspect)
    ymin = (1.0 - height) * trial_uniforms[2]
    xmin = (1.0 - width) * trial_uniforms[3]
    trials = tf.stack([ymin, xmin, ymin + height, xmin + width], axis=-1)  # [samplers, trials, 4]

    min_ious = tf.constant(config.min_ious, tf.float32)
    overlaps = iou(trials, boxes)                                           # [samplers, trials, N]
    passes = tf.reduce_any(overlaps >= min_ious[:, None, None], axis=-1)   # [samplers, trials]
    succeeded = tf.reduce_any(passes, axis=-1)                             # [samplers]
    first_pass = tf.argmax(tf.cast(passes, tf.int32), axis=-1, output_type=tf.int32)
    chosen_trials = tf.gather(trials, first_pass, batch_dims=1)             # [samplers, 4]

    # Candidates: the whole image first, then each sampler's first passing trial. The largest of
    # i.i.d. uniform keys among the successful candidates is a uniform choice among them.
    candidates = tf.concat([tf.constant([WHOLE_IMAGE_PATCH]), chosen_trials], axis=0)
    candidate_min_ious = tf.concat([[_WHOLE_IMAGE_MIN_IOU], min_ious], axis=0)
    valid = tf.concat([[True], succeeded], axis=0)
    keys = tf.where(valid, choice_keys, -1.0)
    choice = tf.argmax(keys, output_type=tf.int32)
    return candidates[choice], candidate_min_ious[choice]


def patch_window(patch, canvas_hw):
    """Normalized patch [4] -> integer pixel window [y, x, height, width] inside the canvas.

    Truncates like Caffe CropImage; at least one pixel per side.
    """
    canvas_f = tf.tile(tf.cast(canvas_hw, tf.float32), [2])
    corners = patch * canvas_f
    top_left = tf.cast(tf.floor(corners[:2]), tf.int32)
    size = tf.cast(tf.floor(corners[2:] - corners[:2]), tf.int32)
    top_left = tf.clip_by_value(top_left, 0, canvas_hw - 1)
    size = tf.clip_by_value(size, 1, canvas_hw - top_left)
    return tf.concat([top_left, size], axis=0)


def crop_image(image, window):
    """image [H, W, C] -> image[y:y+height, x:x+width] for window [y, x, height, width]."""
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])


def image_part_in_window(image_hw, offset_yx, window):
    """Where the window of the canvas meets the image: what to slice from the image, how to pad it.

    Args:
      image_hw: int32 [2].  offset_yx: int32 [2], the image's place on the canvas.
      window: int32 [4], [y, x, height, width] on the canvas.
    Returns:
      begin_yx int32 [2] and size_hw int32 [2] of the image slice (possibly empty), and paddings
      int32 [3, 2] that pad the slice to the window (zero for the channel axis).
    """
    start_on_canvas, size = window[:2], window[2:]
    begin = tf.clip_by_value(start_on_canvas - offset_yx, 0, image_hw)
    end = tf.clip_by_value(start_on_canvas + size - offset_yx, 0, image_hw)
    before = tf.clip_by_value(offset_yx - start_on_canvas, 0, size)
    after = size - before - (end - begin)
    paddings = tf.stack([tf.stack([before[0], after[0]]), tf.stack([before[1], after[1]]), [0, 0]])
    return begin, end - begin, paddings


def pad_with_fill(image, paddings, fill_rgb):
    """tf.pad of image [H, W, 3] with a per-channel fill colour instead of zeros."""
    fill = tf.constant(fill_rgb, tf.float32)
    # Most patches lie inside the image (always without zoom-out): then there is nothing to fill.
    return tf.cond(tf.reduce_any(paddings > 0), lambda: tf.pad(image - fill, paddings) + fill, lambda: image)


def image_part_for_resizing(image_hw, offset_yx, window):
    """The image slice that `resize_window` reads.

    A window inside the image: exactly the window. Otherwise the part of the image inside the window
    plus one pixel around it where the image goes on (bilinear samples at the window's edge read their
    neighbours), and at least min(2, image side) pixels per side even where the window misses the image.

    Returns begin_yx int32 [2] and size_hw int32 [2] of the slice.
    """
    begin, size, paddings = image_part_in_window(image_hw, offset_yx, window)
    min_size = tf.minimum(image_hw, 2)
    begin_with_margin = tf.clip_by_value(begin - 1, 0, image_hw - min_size)
    end_with_margin = tf.maximum(tf.minimum(begin + size + 1, image_hw), begin_with_margin + min_size)
    needs_fill = tf.reduce_any(paddings > 0)
    return (tf.where(needs_fill, begin_with_margin, begin),
            tf.where(needs_fill, end_with_margin - begin_with_margin, size))


def _sampled_inside(first, last, part_side, output_side):
    """Which of output_side evenly spaced samples from `first` to `last` (normalized like
    crop_and_resize's box) fall inside a part of part_side pixels: float32 [output_side], 1 or 0.

    crop_and_resize itself answers, on a ones image 2 pixels wide across, with the same coordinates
    along this axis: so its decision, not a float re-computation of it, says where the fill goes.
    """
    ones = tf.ones(tf.stack([part_side, 2, 1]))
    box = tf.stack([first, 0.0, last, 1.0])[None]
    return tf.image.crop_and_resize(ones[None], box, [0], [output_side, 1], extrapolation_value=0.0)[0, :, 0, 0]


def _inside_run(inside):
    """Start and length of the run of ones in inside [n] (samples are monotonic, so one run): int32.

    The start is the number of leading zeros (no reliance on which index tf.argmax returns on ties).
    """
    count = tf.cast(tf.reduce_sum(inside), tf.int32)
    start = tf.reduce_sum(tf.cast(tf.equal(tf.cumsum(inside), 0.0), tf.int32))
    return tf.where(count > 0, start, 0), count


def resize_window(part, part_offset_yx, window, output_hw, fill_rgb, flip=False):
    """Bilinear resize of a canvas window to output_hw, reading only `part` of the image; mirrored
    left-right when `flip`.

    A part that is the window itself is resized by tf.image.resize. Otherwise the result equals
    tf.image.resize(crop_image(canvas, window), output_hw) (bilinear, half-pixel centres; tested)
    except (1) within one pixel of where image meets fill, which is not blended, and (2) when
    enlarging, on the outermost output rows and columns, which interpolate with the image pixel just
    outside the window where tf.image.resize repeats the window's edge pixel. Either way the cost
    follows the output and the part, however large the zoomed-out window is.

    That second path samples the part with crop_and_resize (a sample outside the part gives 0) and
    lays the sampled rectangle on a constant canvas of the fill (two concatenations): no pass adds or
    subtracts the fill colour over the image (a per-channel broadcast, the costliest op of this step
    when measured). A flip there is free: crop_and_resize reads a box with x1 > x2 mirrored.

    Args:
      part: float32 [h, w, 3], h, w >= 1, the slice given by image_part_for_resizing.
      part_offset_yx: int32 [2], the part's top-left pixel on the canvas.
      window: int32 [4], [y, x, height, width] on the canvas.
      output_hw: (height, width) of the result, Python ints.
      fill_rgb: colour of canvas pixels outside the image.
      flip: bool scalar (tensor or Python): mirror the result left-right.
    Returns:
      float32 [output height, output width, 3].
    """
    part_hw = tf.shape(part)[:2]
    flip = tf.convert_to_tensor(flip, tf.bool)
    is_window = tf.reduce_all(part_offset_yx == window[:2]) & tf.reduce_all(part_hw == window[2:])

    def resize_part():
        resized = tf.image.resize(part, output_hw)
        return tf.cond(flip, lambda: tf.reverse(resized, axis=[1]), lambda: resized)

    def resize_with_fill():
        output_hw_f = tf.constant(output_hw, tf.float32)
        window_f = tf.cast(window, tf.float32)
        step = window_f[2:] / output_hw_f
        window_start_in_part = window_f[:2] - tf.cast(part_offset_yx, tf.float32)
        # Half-pixel centres: output pixel i samples window coordinate (i + 0.5) * step - 0.5.
        first = window_start_in_part + 0.5 * step - 0.5
        last = window_start_in_part + (output_hw_f - 0.5) * step - 0.5
        # crop_and_resize maps a normalized coordinate c to pixel c * (side - 1).
        pixels_per_unit = tf.maximum(tf.cast(part_hw, tf.float32) - 1.0, 1.0)
        first, last = first / pixels_per_unit, last / pixels_per_unit
        x1, x2 = tf.where(flip, last[1], first[1]), tf.where(flip, first[1], last[1])
        box = tf.stack([first[0], x1, last[0], x2])
        resized = tf.image.crop_and_resize(part[None], box[None], [0], output_hw)[0]
        row0, rows = _inside_run(_sampled_inside(first[0], last[0], part_hw[0], output_hw[0]))
        col0, cols = _inside_run(_sampled_inside(x1, x2, part_hw[1], output_hw[1]))
        inside = tf.slice(resized, tf.stack([row0, col0, 0]), tf.stack([rows, cols, 3]))
        fill = tf.constant(np.broadcast_to(np.asarray(fill_rgb, np.float32), tuple(output_hw) + (3,)))
        middle = tf.concat([fill[:rows, :col0], inside, fill[:rows, col0 + cols:]], axis=1)
        return tf.concat([fill[:row0], middle, fill[row0 + rows:]], axis=0)

    return tf.cond(is_window, resize_part, resize_with_fill)


def crop_boxes(boxes_on_canvas, window):
    """Keeps the boxes whose centre is in the window, clipped to it and normalized to it.

    Args:
      boxes_on_canvas: float32 [N, 4], pixel [ymin, xmin, ymax, xmax] on the canvas.
      window: int32 [4], [y, x, height, width].
    Returns:
      boxes float32 [K, 4] normalized to the window, with positive area, and keep int32 [K], the
      indices of the kept input boxes (gather labels and other per-box tensors with it).
    """
    window_f = tf.cast(window, tf.float32)
    low = window_f[:2]
    high = window_f[:2] + window_f[2:]
    centres = (boxes_on_canvas[:, :2] + boxes_on_canvas[:, 2:]) / 2.0
    centre_inside = tf.reduce_all((centres >= low) & (centres <= high), axis=-1)
    clipped_min = tf.clip_by_value(boxes_on_canvas[:, :2], low, high)
    clipped_max = tf.clip_by_value(boxes_on_canvas[:, 2:], low, high)
    positive_area = tf.reduce_all(clipped_max > clipped_min, axis=-1)
    keep = tf.cast(tf.where(centre_inside & positive_area)[:, 0], tf.int32)
    normalized = tf.concat([(clipped_min - low) / window_f[2:], (clipped_max - low) / window_f[2:]], axis=-1)
    return tf.clip_by_value(tf.gather(normalized, keep), 0.0, 1.0), keep


def draw_zoom_out_and_crop(image_hw, boxes, seed, zoom_out: ZoomOutConfig, crop: CropConfig):
    """Draws both geometric steps and maps the boxes through them.

    Args:
      image_hw: int32 [2].  boxes: float32 [N, 4] normalized to the image.  seed: int [2].
    Returns:
      canvas_hw [2], offset_yx [2], window [4] (int32) for the image functions above, and
      boxes float32 [K, 4] normalized to the window with keep int32 [K] as in crop_boxes.
    """
    zoom_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    canvas_hw, offset_yx = draw_zoom_out(image_hw, zoom_seed, zoom_out)
    boxes_on_canvas = _image_to_canvas_pixels(boxes, image_hw, offset_yx)
    canvas_scale = tf.tile(tf.cast(canvas_hw, tf.float32), [2])
    patch, _ = sample_patch(boxes_on_canvas / canvas_scale, crop_seed, crop)
    window = patch_window(patch, canvas_hw)
    cropped_boxes, keep = crop_boxes(boxes_on_canvas, window)
    return canvas_hw, offset_yx, window, cropped_boxes, keep


def flip_boxes(boxes, applies):
    """Mirrors normalized boxes [N, 4] left-right when the scalar bool `applies` is True."""
    flipped_boxes = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
    return tf.where(applies, flipped_boxes, boxes)


def flip_left_right(image, boxes, applies):
    """Mirrors image [H, W, C] and normalized boxes [N, 4] when the scalar bool `applies` is True."""
    return tf.cond(applies, lambda: tf.reverse(image, axis=[1]), lambda: image), flip_boxes(boxes, applies)
