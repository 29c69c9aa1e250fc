"""SSD training augmentation, per image: photometric -> zoom-out -> min-IoU crop -> flip (DESIGN.md).

`augment` is a pure function of its inputs and a stateless seed, so it gives the same output for the
same seed under a parallel tf.data map, and it runs in graph mode with dynamic H, W and N (N may be 0;
a crop may also drop every box, which leaves N = 0: an all-background image downstream).

Order and cost (measured with benchmarks/input_pipeline.py-style runs on one core, 500x375 JPEGs): the
colour distortion stays where Caffe has it, before the crop, applied only to the part of the image
the patch keeps. Moving it after the fused resize, onto the fixed S x S output, was measured slower
(about 110 against 140 images/s per core): an average patch holds fewer image pixels than 300 x 300,
and after a zoom-out the distortion would also tint the mean fill, which Caffe leaves undistorted.
Hue remains tf.image.adjust_hue (exact HSV, the dominant cost): a YIQ rotation is about 5x cheaper
but differs from it by 13 levels on average and up to 67 (of 255) at 18 degrees, too far to call the
same augmentation; an exact RGB formula of the HSV shift was 2x slower than the kernel.
tf.io.decode_and_crop_jpeg was rejected too: its pixels differ from decode-then-slice near the crop
edges (chroma upsampling; 114 of 200 random windows differ), and a full decode is only ~1 ms.

Mean subtraction is the network's first layer (nets/ssd.py). Resizing to the preset's input size comes
after this, unless `output_size` asks augment to fuse it with the crop and the flip (much cheaper
after a zoom-out: geometric.resize_window).

    image   float32 or uint8 [H, W, 3]  RGB, 0-255, not mean-subtracted (output: float32)
    boxes   float32 [N, 4]     [ymin, xmin, ymax, xmax] normalized to the image
    labels  int32   [N]
    seed    int32 / int64 [2]
"""

import dataclasses
from typing import Dict, Optional, Tuple

import tensorflow as tf

from preprocessing import geometric
from preprocessing import mlperf_augment
from preprocessing import photometric
from preprocessing import ssdlite_augment
from preprocessing.geometric import CropConfig, ZoomOutConfig
from preprocessing.photometric import PhotometricConfig

_NUM_STEPS = 3  # photometric, zoom-out + crop, flip

# Augmentation recipes (train_ssd.py --augmentation): "caffe" is ssd_pascal.py's (this module's
# `augment`), the default everywhere. Every other recipe's module is imported here and its function
# listed in POLICIES under its name; each takes augment's arguments and returns what augment returns.
CAFFE = "caffe"
POLICIES = {
    mlperf_augment.NAME: mlperf_augment.augment,   # the MLPerf SSD-ResNet34 reference's recipe
    "ssdlite": ssdlite_augment.augment,            # torchvision's SSDLite320 recipe: IoU crop + flip only
}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Every probability and range of the augmentation; the defaults are ssd_pascal.py's."""

    photometric: PhotometricConfig = PhotometricConfig()
    zoom_out: ZoomOutConfig = ZoomOutConfig()
    crop: CropConfig = CropConfig()
    flip_prob: float = 0.5   # transform_param mirror: true
    policy: str = CAFFE      # a key of POLICIES, or CAFFE: this module's `augment`


def policy_names():
    """Every augmentation recipe's name, the default first."""
    return (CAFFE,) + tuple(sorted(POLICIES))


def split_seeds(seed):
    """One stateless seed [2] -> the seeds of the photometric, geometric and flip steps, each [2]."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, _NUM_STEPS))


def augment(image, boxes, labels, seed, config: AugmentConfig = AugmentConfig(),
            extras: Optional[Dict[str, tf.Tensor]] = None, output_size: Optional[Tuple[int, int]] = None):
    """Random SSD augmentation of one image and its boxes.

    Equals photometric.distort_colors on the whole image, then geometric.zoom_out_image, crop_image
    and flip_left_right (tested), but never builds the zoomed-out canvas and distorts only the pixels
    of the image that end up in the patch: the colour distortion is pointwise, so it commutes with
    slicing, and the mean fill is added afterwards, undistorted, as in Caffe.

    Args:
      image: float32 or uint8 [H, W, 3], RGB in [0, 255] (uint8 is cast after the crop: cheaper).
      boxes: float32 [N, 4], normalized [ymin, xmin, ymax, xmax].
      labels: int32 [N].
      seed: int32 or int64 [2], stateless seed.
      config: probabilities and ranges. Pass one instance: tf.function traces again for a new one.
      extras: optional dict of other per-box tensors [N, ...] (e.g. difficult flags), kept, dropped and
        reordered exactly like labels.
      output_size: (height, width) to resize the patch to, fused with the crop (geometric.resize_window):
        much cheaper than resizing the returned patch, which after a zoom-out can be 4 x 4 times the
        image. None returns the patch at its own size.
    Returns:
      (image float32 [H', W', 3] in [0, 255], [height, width, 3] given output_size;
       boxes float32 [K, 4] normalized to the new image, inside [0, 1], with positive area;
       labels int32 [K]), plus the gathered extras dict as a fourth element when `extras` was given.
    """
    if config.policy != CAFFE:
        if config.policy not in POLICIES:
            raise ValueError(f"unknown augmentation {config.policy!r}; known: {', '.join(policy_names())}")
        return POLICIES[config.policy](image, boxes, labels, seed, config, extras, output_size)
    photometric_seed, geometric_seed, flip_seed = split_seeds(seed)
    image_hw = tf.shape(image)[:2]
    _, offset_yx, window, boxes, keep = geometric.draw_zoom_out_and_crop(
        image_hw, boxes, geometric_seed, config.zoom_out, config.crop)
    fill_rgb = config.zoom_out.fill_rgb
    if output_size is None:
        begin, size, paddings = geometric.image_part_in_window(image_hw, offset_yx, window)
    else:
        begin, size = geometric.image_part_for_resizing(image_hw, offset_yx, window)
    part = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
    # Cast after slicing: a uint8 image is converted only where the patch needs it.
    part = photometric.distort_colors(tf.cast(part, tf.float32), photometric_seed, config.photometric)
    flips = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
    if output_size is None:
        image, boxes = geometric.flip_left_right(geometric.pad_with_fill(part, paddings, fill_rgb), boxes, flips)
    else:
        # The resize mirrors the image itself (free on its zoom-out path); the boxes follow here.
        image = geometric.resize_window(part, offset_yx + begin, window, output_size, fill_rgb, flip=flips)
        boxes = geometric.flip_boxes(boxes, flips)
    labels = tf.gather(labels, keep)
    if extras is None:
        return image, boxes, labels
    return image, boxes, labels, {name: tf.gather(value, keep) for name, value in extras.items()}
