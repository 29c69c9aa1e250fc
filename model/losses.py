"""The SSD multibox loss (paper §2.2 "Training objective", Caffe MultiBoxLossLayer in ssd_pascal.py).

    total = (softmax CE over positives and hard negatives + smooth L1 over positives) / N

* Positives: anchors with cls_targets > 0 (the matcher's output, via model.targets).
* Ignored: anchors with cls_targets == IGNORE_CLASS (covered by a COCO crowd box, model/targets.py)
  are neither: no cross-entropy, no localisation, and never mined as negatives.
* Hard negatives, per image i: the k_i background anchors with the highest CE (the loss for class 0),
  k_i = min(floor(negative_ratio * positives_i), negatives_i). An image without positives contributes
  no negatives (Caffe / ssd.pytorch). The ranking is computed on stop_gradient'ed losses: mining selects
  anchors, it is not itself differentiated.
* Localisation: smooth L1 with delta 1 (Caffe `SMOOTH_L1`), summed over the 4 code coordinates of
  positives; alpha = 1 (Caffe `loc_weight: 1.0`).
* N: `normalizer` if given, else the batch's positives. Under tf.distribute the training loop passes the
  GLOBAL number of positives over all replicas, so that summing the replicas' losses (the default
  all-reduce of gradients) gives exactly the single-device update.
* `normalization="per_image"` (the MLPerf reference, single_stage_detector/ssd/base_model.py Loss):
  each image's (CE + smooth L1) sum is divided by that image's own positives (an image without
  positives contributes 0), and the batch takes the mean over images: the sum of the per-image terms
  divided by `normalizer`, which is then the number of images (default B; the GLOBAL batch under
  tf.distribute, for the same reason as above). Measured difference to the reference: its mining keeps
  min(3 * positives, A) ranks counted over all anchors (positives ranked as zero-loss negatives), ours
  min(3 * positives, negatives) negatives; the two differ only when an image's negatives run out.

Shapes: cls_logits [B, A, C+1], box_codes [B, A, 4], cls_targets int [B, A], box_targets [B, A, 4].
"""

import tensorflow as tf

from dataset import fields

# The cls_targets value of an ignored anchor (named once, in dataset/fields.py).
IGNORE_CLASS = fields.IGNORE_CLASS

# Caffe `SMOOTH_L1` loc loss: quadratic below |x| = 1, linear above.
SMOOTH_L1_DELTA = 1.0


def _smooth_l1(diff):
    abs_diff = tf.abs(diff)
    return tf.where(abs_diff < SMOOTH_L1_DELTA,
                    0.5 * tf.square(abs_diff) / SMOOTH_L1_DELTA,
                    abs_diff - 0.5 * SMOOTH_L1_DELTA)


def hard_negative_mask(background_loss, positive, negative_ratio, ignored=None):
    """Per image, the negatives with the highest loss: bool [B, A].

    background_loss: float [B, A] (loss of class 0; only its order among negatives matters);
    positive: bool [B, A]; ignored: optional bool [B, A], anchors that are never negatives.
    Keeps k_i = min(floor(negative_ratio * positives_i), negatives_i) per image;
    ties in the loss are broken by the lower anchor index (stable sort).
    """
    background_loss = tf.stop_gradient(background_loss)
    negative = tf.logical_not(positive)
    if ignored is not None:
        negative = tf.logical_and(negative, tf.logical_not(ignored))
    # Positives sort after every negative (losses are >= 0).
    mining_loss = tf.where(negative, background_loss, -1.0)
    order = tf.argsort(mining_loss, axis=1, direction="DESCENDING", stable=True)      # [B, A]
    rank = tf.argsort(order, axis=1, stable=True)                                     # [B, A]
    num_positive = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)                 # [B]
    num_negative = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)                 # [B]
    wanted = tf.cast(tf.floor(negative_ratio * tf.cast(num_positive, tf.float32)), tf.int32)
    k = tf.minimum(wanted, num_negative)                                              # [B]
    return tf.logical_and(negative, rank < k[:, None])


BATCH_POSITIVES, PER_IMAGE = "batch_positives", "per_image"   # model.presets.LOSS_NORMALIZATIONS


def multibox_loss(cls_logits, box_codes, cls_targets, box_targets, negative_ratio=3.0, normalizer=None,
                  normalization=BATCH_POSITIVES):
    """The SSD loss: dict of float32 scalars "cls_loss", "box_loss", "total_loss", "num_positives".

    Args:
      cls_logits: [B, A, C+1] (any float dtype; computed in float32 for mixed precision).
      box_codes: [B, A, 4] predicted [ty, tx, th, tw].
      cls_targets: int [B, A], 0 background, 1..C positives, IGNORE_CLASS ignored.
      box_targets: [B, A, 4] encoded targets (ignored at background anchors).
      negative_ratio: hard negatives per positive (config.negative_ratio; paper: 3).
      normalizer: scalar divisor; default max(positives in this batch, 1), or B for "per_image".
      normalization: BATCH_POSITIVES (Caffe) or PER_IMAGE (MLPerf), see the module docstring.
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    box_codes = tf.cast(box_codes, tf.float32)
    box_targets = tf.cast(box_targets, tf.float32)
    cls_targets = tf.cast(cls_targets, tf.int32)
    positive = cls_targets > fields.BACKGROUND_CLASS                                  # [B, A]
    ignored = tf.equal(cls_targets, IGNORE_CLASS)                                     # [B, A]

    # The CE op rejects a negative label, so ignored anchors get class 0 here and are masked out.
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(ignored, fields.BACKGROUND_CLASS, cls_targets), logits=cls_logits)  # [B, A]
    # At a negative the CE *is* the background loss, so it ranks the negatives directly.
    hard_negative = hard_negative_mask(cross_entropy, positive, negative_ratio, ignored)
    selected = tf.cast(tf.logical_or(positive, hard_negative), tf.float32)
    cls_per_image = tf.reduce_sum(cross_entropy * selected, axis=1)                  # [B]

    box_per_anchor = tf.reduce_sum(_smooth_l1(box_codes - box_targets), axis=-1)    # [B, A]
    box_per_image = tf.reduce_sum(tf.where(positive, box_per_anchor, 0.0), axis=1)  # [B]

    positives_per_image = tf.reduce_sum(tf.cast(positive, tf.float32), axis=1)       # [B]
    num_positives = tf.reduce_sum(positives_per_image)
    if normalization == PER_IMAGE:
        # An image without positives has no mined negatives either, so its sums are 0 and dividing
        # them by 1 instead of 0 gives the reference's `num_mask` zero.
        own = tf.maximum(positives_per_image, 1.0)
        cls_sum = tf.reduce_sum(cls_per_image / own)
        box_sum = tf.reduce_sum(box_per_image / own)
        if normalizer is None:
            normalizer = tf.cast(tf.shape(cls_targets)[0], tf.float32)
    elif normalization == BATCH_POSITIVES:
        cls_sum = tf.reduce_sum(cls_per_image)
        box_sum = tf.reduce_sum(box_per_image)
        if normalizer is None:
            # A batch without any object (legal: all-background crops) would divide by zero; its loss is
            # then the hard-negative CE alone, which is zero too, so dividing by 1 changes nothing else.
            normalizer = tf.maximum(num_positives, 1.0)
    else:
        raise ValueError(f"unknown loss normalization {normalization!r}; known: {BATCH_POSITIVES}, {PER_IMAGE}")
    normalizer = tf.cast(normalizer, tf.float32)
    cls_loss = cls_sum / normalizer
    box_loss = box_sum / normalizer
    return {
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "total_loss": cls_loss + box_loss,
        "num_positives": num_positives,
    }
