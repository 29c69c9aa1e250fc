"""The MLPerf SSD-ResNet34 training augmentation (train_ssd.py --augmentation mlperf): crop -> flip ->
resize -> ColorJitter, as the reference does it.

Reference: mlcommons/training single_stage_detector/ssd/utils.py at d764d662 (its last v1.0/v1.1 state),
`SSDTransformer.__call__`: `SSDCropping` (num_cropping_iterations=1, the MLPerf log's max_samples 1),
`RandomHorizontalFlip`, then torchvision `Resize((300, 300))` and `ColorJitter(brightness=0.125,
contrast=0.5, saturation=0.5, hue=0.05)` on the PIL image. Against the Caffe recipe (preprocessing/augment):
no zoom-out; one try per drawn option, accepted only when the patch's IoU with EVERY box is above the
option's minimum, otherwise a new option is drawn; colour after the resize, on every image.

SSDCropping, per image (`sample_crop`), repeated until something is returned:
  1. option ~ uniform over (whole image, min IoU 0.1, 0.3, 0.5, 0.7, 0.9, any patch);
     the whole image returns at once;
  2. w, h ~ U[0.3, 1] each (fractions of the image); rejected unless 0.5 <= w / h <= 2;
  3. left ~ U[0, 1 - w], top ~ U[0, 1 - h];
  4. rejected unless IoU(box, patch) > min IoU for every box;
  5. boxes whose centre lies strictly inside the patch are kept (rejected when none is), clipped to the
     patch and renormalised by the continuous w and h; the pixels kept are columns int(left * W) to
     int((left + w) * W) and likewise rows, as PIL's crop of those integer bounds.
An image without boxes can only come back whole (step 5 rejects every patch), as in the reference.
The reference loops without bound; here the loop stops after MAX_DRAWS draws (the whole image then),
which changes nothing measurable: each draw returns the whole image with probability 1/7.

Flip: p 0.5 after the crop (the reference flips the PIL patch before the resize; a bilinear resize
commutes with a mirror, so the image is mirrored after it here, cheaper on the smaller image).

Resize: the patch to `output_size` by tf.image.resize bilinear with antialias=True, rounded to whole
levels: PIL's BILINEAR resize is the same triangle filter widened by the scale when shrinking
(docs/mlperf.md lists the measured difference).

ColorJitter (`color_jitter`): torchvision draws brightness b ~ U[0.875, 1.125], contrast c and saturation
s ~ U[0.5, 1.5], hue h ~ U[-0.05, 0.05], and applies the four PIL operations in a random order (a
uniform permutation). Each is ported from Pillow's C code, with its whole-level truncations:
  brightness  ImageEnhance.Brightness: blend(black, img, b)
  contrast    ImageEnhance.Contrast: blend(mean, img, c), mean = int(mean(L) + 0.5) over the image
  saturation  ImageEnhance.Color: blend(L, img, s) per pixel
  hue         torchvision F_pil.adjust_hue: RGB -> 8-bit HSV, H += int8(h * 255) mod 256, -> RGB
where blend(a, b, f) = trunc(a + f (b - a)) clipped to [0, 255] (Image.blend) and L is Pillow's luma
(19595 R + 38470 G + 7471 B + 0x8000) >> 16. tests/test_mlperf_augment.py checks each operation
against torchvision's own output, and the crop and jitter statistics against the reference code's.

    image   float32 or uint8 [H, W, 3]  RGB, 0-255 (output: float32 whole levels in [0, 255])
    boxes   float32 [N, 4]     [ymin, xmin, ymax, xmax] normalized to the image
    labels  int32   [N]
    seed    int32 / int64 [2]
"""

import math

import tensorflow as tf

from model import box_ops
from preprocessing import geometric

NAME = "mlperf"
# SSDCropping.sample_options as min IoUs: the whole image (no crop), five minima, any patch.
WHOLE_IMAGE = None
ANY_PATCH = -math.inf
SAMPLE_OPTIONS = (WHOLE_IMAGE, 0.1, 0.3, 0.5, 0.7, 0.9, ANY_PATCH)
PATCH_SIDE_RANGE = (0.3, 1.0)     # w, h ~ U[0.3, 1]
PATCH_ASPECT_RANGE = (0.5, 2.0)   # w / h kept inside, bounds included
MAX_DRAWS = 200                   # (6/7)^200 ~ 4e-14: the reference's unbounded loop, in practice
FLIP_PROB = 0.5
# ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05): factor ranges.
BRIGHTNESS_RANGE = (0.875, 1.125)
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_RANGE = (-0.05, 0.05)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)   # torchvision's fn_idx numbering
_LUMA_WEIGHTS = (19595.0, 38470.0, 7471.0)          # Pillow's L24: fixed point over 2^16
_PIXEL_MAX = 255.0


def _uniform(u, value_range):
    low, high = value_range
    return low + (high - low) * u


def try_crop(boxes, min_iou, uniforms):
    """SSDCropping tries for an option other than the whole image, M at once.

    Args:
      boxes: float32 [N, 4] normalized yxyx.
      min_iou: float32 scalar (ANY_PATCH: -inf).
      uniforms: float32 [M, 4], U[0, 1) draws for w, h, left, top (the reference's order) per try.
    Returns:
      (accepted bool [M], window float32 [M, 4] normalized yxyx, keep bool [M, N]: centre strictly inside).
    """
    w = _uniform(uniforms[:, 0], PATCH_SIDE_RANGE)
    h = _uniform(uniforms[:, 1], PATCH_SIDE_RANGE)
    left = uniforms[:, 2] * (1.0 - w)
    top = uniforms[:, 3] * (1.0 - h)
    window = tf.stack([top, left, top + h, left + w], axis=1)                    # [M, 4]
    aspect_ok = tf.logical_and(w / h >= PATCH_ASPECT_RANGE[0], w / h <= PATCH_ASPECT_RANGE[1])
    ious = box_ops.iou(window, boxes)                                            # [M, N]
    iou_ok = tf.reduce_all(ious > min_iou, axis=1)
    centre_y = 0.5 * (boxes[:, 0] + boxes[:, 2])[None, :]
    centre_x = 0.5 * (boxes[:, 1] + boxes[:, 3])[None, :]
    keep = ((centre_y > window[:, 0:1]) & (centre_y < window[:, 2:3]) &
            (centre_x > window[:, 1:2]) & (centre_x < window[:, 3:4]))           # [M, N]
    accepted = aspect_ok & iou_ok & tf.reduce_any(keep, axis=1)
    return accepted, window, keep


def sample_crop(boxes, seed, options=SAMPLE_OPTIONS, max_draws=MAX_DRAWS):
    """SSDCropping's choice for one image (module docstring), a pure function of `seed`.

    Args:
      boxes: float32 [N, 4] normalized yxyx; N may be 0.
      seed: int [2] stateless seed.
      options: the options drawn from uniformly (WHOLE_IMAGE, or a min IoU; ANY_PATCH = -inf).
      max_draws: the bound on option draws (the whole image after it).
    Returns:
      (window float32 [4]: the patch, [0, 0, 1, 1] for the whole image; keep bool [N]: boxes kept;
       draws int32: options drawn, the accepted one included).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    whole = [o is WHOLE_IMAGE for o in options]
    min_ious = tf.constant([0.0 if o is WHOLE_IMAGE else o for o in options], tf.float32)
    is_whole = tf.constant(whole)
    num_options = len(options)
    whole_window = tf.constant(geometric.WHOLE_IMAGE_PATCH, tf.float32)
    all_boxes = tf.ones(tf.shape(boxes)[:1], tf.bool)

    def draw(index, done, window, keep):
        u = tf.random.stateless_uniform([5], tf.random.experimental.stateless_fold_in(seed, index))
        option = tf.minimum(tf.cast(u[0] * num_options, tf.int32), num_options - 1)
        accepted, new_window, new_keep = (t[0] for t in try_crop(boxes, min_ious[option], u[None, 1:]))
        take_whole = is_whole[option]
        done = tf.logical_or(take_whole, accepted)
        window = tf.where(take_whole, whole_window, new_window)
        keep = tf.where(take_whole, all_boxes, new_keep)
        return index + 1, done, window, keep

    index, done, window, keep = tf.while_loop(
        lambda index, done, window, keep: tf.logical_not(done),
        draw, (tf.constant(0), tf.constant(False), whole_window, all_boxes),
        maximum_iterations=max_draws)
    window = tf.where(done, window, whole_window)
    keep = tf.where(done, keep, all_boxes)
    return window, keep, index


def crop_boxes(boxes, window):
    """Boxes [N, 4] clipped to `window` [4] and renormalized to it by its continuous size (utils.py)."""
    top, left, bottom, right = tf.unstack(window)
    clipped = tf.stack([tf.maximum(boxes[:, 0], top), tf.maximum(boxes[:, 1], left),
                        tf.minimum(boxes[:, 2], bottom), tf.minimum(boxes[:, 3], right)], axis=1)
    origin = tf.stack([top, left, top, left])
    size = tf.stack([bottom - top, right - left, bottom - top, right - left])
    return (clipped - origin) / size


def crop_pixels(image, window):
    """The image's rows int(top H) .. int(bottom H) and columns int(left W) .. int(right W) (PIL's crop of
    the reference's integer bounds; at least one pixel each way)."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    start = tf.cast(tf.floor(window[:2] * hw), tf.int32)
    stop = tf.maximum(tf.cast(tf.floor(window[2:] * hw), tf.int32), start + 1)
    return image[start[0]:stop[0], start[1]:stop[1]]


# -- ColorJitter: Pillow's operations on whole levels ------------------------------------------------

def _blend(degenerate, image, factor):
    """Image.blend(degenerate, image, factor): trunc(d + f (i - d)), clipped (float32 whole levels)."""
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, _PIXEL_MAX)


def luma(image):
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, [..., H, W, 1] whole levels."""
    weights = tf.constant(_LUMA_WEIGHTS, tf.float32)
    return tf.floor((tf.reduce_sum(image * weights, axis=-1, keepdims=True) + 32768.0) / 65536.0)


def adjust_brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def adjust_contrast(image, factor):
    mean = tf.floor(tf.reduce_mean(luma(image)) + 0.5)
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def adjust_saturation(image, factor):
    return _blend(tf.broadcast_to(luma(image), tf.shape(image)), image, factor)


def _f32(x):
    """A C `float` store of a double expression: rounded to float32, carried on as float64."""
    return tf.cast(tf.cast(x, tf.float32), tf.float64)


def _rgb_to_hsv8(image):
    """Pillow's rgb2hsv_row (Convert.c), with its float stores and double arithmetic: 8-bit H, S, V
    (H and S truncated, V = max), each float64 [H, W]."""
    image = tf.cast(image, tf.float64)
    r, g, b = tf.unstack(image, axis=-1)
    maxc = tf.reduce_max(image, axis=-1)
    minc = tf.reduce_min(image, axis=-1)
    grey = tf.equal(maxc, minc)
    chroma = _f32(tf.where(grey, tf.ones_like(maxc), maxc - minc))
    saturation = _f32(chroma / tf.where(grey, tf.ones_like(maxc), maxc))
    rc, gc, bc = _f32((maxc - r) / chroma), _f32((maxc - g) / chroma), _f32((maxc - b) / chroma)
    hue = _f32(tf.where(tf.equal(r, maxc), _f32(bc - gc),
                        tf.where(tf.equal(g, maxc), 2.0 + rc - bc, 4.0 + gc - rc)))
    # fmod(h / 6 + 1, 1) for h / 6 + 1 in [5/6, 2): one exact subtraction (tf.math.floormod on float64
    # cost a third of the whole ColorJitter).
    hue = hue / 6.0 + 1.0
    hue = _f32(tf.where(hue >= 1.0, hue - 1.0, hue))
    h8 = tf.where(grey, tf.zeros_like(hue), tf.clip_by_value(tf.floor(hue * _PIXEL_MAX), 0.0, _PIXEL_MAX))
    s8 = tf.where(grey, tf.zeros_like(hue), tf.clip_by_value(tf.floor(saturation * _PIXEL_MAX), 0.0, _PIXEL_MAX))
    return h8, s8, maxc


def _hsv8_to_rgb(h8, s8, v):
    """Pillow's hsv2rgb (Convert.c) on 8-bit H, S, V (float64 [H, W]): rounded p, q, t -> float32 RGB."""
    sector = tf.floor(h8 * 6.0 / _PIXEL_MAX)
    f = _f32(h8 * 6.0 / _PIXEL_MAX - sector)
    fs = _f32(s8 / _PIXEL_MAX)
    p = tf.clip_by_value(tf.round(v * (1.0 - fs)), 0.0, _PIXEL_MAX)
    q = tf.clip_by_value(tf.round(v * (1.0 - fs * f)), 0.0, _PIXEL_MAX)
    t = tf.clip_by_value(tf.round(v * (1.0 - fs * (1.0 - f))), 0.0, _PIXEL_MAX)
    i = tf.cast(sector, tf.int32)                    # 0..6; 6 (H = 255) is sector 0, as i % 6
    # (r, g, b) per sector 0..5.
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q), (v, t, p))
    channels = []
    for c in range(3):
        value = table[6][c]
        for k in range(5, -1, -1):
            value = tf.where(tf.equal(i, k), table[k][c], value)
        channels.append(value)
    rgb = tf.where(tf.equal(s8, 0.0)[..., None], v[..., None], tf.stack(channels, axis=-1))
    return tf.cast(rgb, tf.float32)


def adjust_hue(image, factor):
    """torchvision F_pil.adjust_hue: the 8-bit HSV hue plus int8(factor * 255), modulo 256."""
    h8, s8, v = _rgb_to_hsv8(image)
    shift = tf.cast(tf.cast(factor * _PIXEL_MAX, tf.int32), tf.float64)   # np.int8: toward zero
    hue = h8 + shift                                                       # in [-12, 267]
    hue = tf.where(hue < 0.0, hue + 256.0, tf.where(hue >= 256.0, hue - 256.0, hue))   # modulo 256 (uint8)
    return _hsv8_to_rgb(hue, s8, v)


def draw_jitter(seed):
    """torchvision ColorJitter.get_params from one seed: (order int32 [4], a uniform permutation of
    BRIGHTNESS, CONTRAST, SATURATION, HUE; factors float32 [4] in that numbering)."""
    order_seed, factor_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    order = tf.cast(tf.argsort(tf.random.stateless_uniform([4], order_seed)), tf.int32)
    u = tf.random.stateless_uniform([4], factor_seed)
    factors = tf.stack([_uniform(u[0], BRIGHTNESS_RANGE), _uniform(u[1], CONTRAST_RANGE),
                        _uniform(u[2], SATURATION_RANGE), _uniform(u[3], HUE_RANGE)])
    return order, factors


def apply_jitter(image, order, factors):
    """The four operations on whole-level float32 `image` [H, W, 3], in `order`, with `factors`."""
    operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for position in range(4):
        which = order[position]
        factor = tf.gather(factors, which)
        image = tf.switch_case(which, [lambda f=fn: f(image, factor) for fn in operations])
        image.set_shape([None, None, 3])
    return image


def color_jitter(image, seed):
    """ColorJitter(0.125, 0.5, 0.5, 0.05) of a whole-level image [H, W, 3] (module docstring)."""
    order, factors = draw_jitter(seed)
    return apply_jitter(tf.convert_to_tensor(image, tf.float32), order, factors)


def augment(image, boxes, labels, seed, config=None, extras=None, output_size=None):
    """The reference's training transform of one image: crop, flip, resize, ColorJitter.

    Takes and returns what preprocessing.augment.augment does (its `config` is the Caffe recipe's and is
    not used: every number here is the reference's). With `output_size` None the patch keeps its size
    and is jittered as it is.
    """
    del config
    crop_seed, flip_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    window, keep, _ = sample_crop(boxes, crop_seed)
    part = tf.cast(crop_pixels(image, window), tf.float32)
    boxes = tf.boolean_mask(crop_boxes(boxes, window), keep)
    kept = tf.where(keep)[:, 0]
    if output_size is not None:
        part = tf.image.resize(part, output_size, method=tf.image.ResizeMethod.BILINEAR, antialias=True)
        part = tf.clip_by_value(tf.round(part), 0.0, _PIXEL_MAX)
    flips = tf.random.stateless_uniform([], flip_seed) < FLIP_PROB
    part, boxes = geometric.flip_left_right(part, boxes, flips)
    image = color_jitter(part, jitter_seed)
    labels = tf.gather(labels, kept)
    if extras is None:
        return image, boxes, labels
    return image, boxes, labels, {name: tf.gather(value, kept) for name, value in extras.items()}
