"""Post-processing: raw head outputs -> fixed-size, padded detections (Caffe DetectionOutputLayer).

Steps (numbers from config; ssd_pascal.py test phase: 0.01, 0.45, 400, 200):
  1. decode box codes against the anchors (model.box_coder), softmax the logits, drop the background
     column; with config.clip_boxes_before_nms (torchvision) clip the decoded boxes to [0, 1] here, so
     NMS compares clipped boxes (otherwise the kept boxes are clipped after NMS, as Caffe does);
  2. per class, keep the config.max_detections_per_class highest-scoring anchors (Caffe `nms top_k:
     400`, a pre-selection before NMS; it also makes NMS several times faster on CPU);
  3. per class, drop scores <= config.score_threshold (strictly greater is kept, as in Caffe and
     tf.image.combined_non_max_suppression), then greedy NMS at config.nms_iou_threshold;
  4. per image, the config.max_detections highest-scoring survivors over all classes (Caffe
     `keep_top_k: 200`).

Boxes of different classes never suppress each other. Everything is batched in the graph
(tf.function-friendly) and padded to K = config.max_detections.

Output dict (keys from dataset/fields.py), valid rows first, sorted by descending score:
  DETECTION_BOXES   float32 [B, K, 4]  normalized yxyx, clipped to [0, 1]
  DETECTION_SCORES  float32 [B, K]     0 in padding
  DETECTION_CLASSES int32   [B, K]     1..C, 0 (background id) in padding
  NUM_DETECTIONS    int32   [B]        valid rows per image
"""

import tensorflow as tf

from dataset import fields
from model import box_coder


def postprocess(cls_logits, box_codes, anchors, config):
    """Detections from cls_logits [B, A, C+1] and box_codes [B, A, 4] with anchors [A, 4] (module doc)."""
    cls_logits = tf.cast(cls_logits, tf.float32)
    boxes = box_coder.decode(box_codes, anchors, config.variances)                 # [B, A, 4]
    if config.clip_boxes_before_nms:
        boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    scores = tf.nn.softmax(cls_logits, axis=-1)[:, :, fields.BACKGROUND_CLASS + 1:]  # [B, A, C]

    num_anchors = boxes.shape[1] if boxes.shape[1] is not None else tf.shape(boxes)[1]
    candidates = (min(config.max_detections_per_class, num_anchors) if isinstance(num_anchors, int)
                  else tf.minimum(config.max_detections_per_class, num_anchors))
    class_scores, anchor_index = tf.math.top_k(tf.transpose(scores, [0, 2, 1]), candidates)  # [B, C, k]
    class_boxes = tf.gather(boxes, anchor_index, batch_dims=1)                     # [B, C, k, 4]

    # combined NMS wants boxes [B, N, q, 4] with q = C (one box per class) and scores [B, N, C].
    nms_boxes, nms_scores, nms_classes, num_detections = tf.image.combined_non_max_suppression(
        tf.transpose(class_boxes, [0, 2, 1, 3]),
        tf.transpose(class_scores, [0, 2, 1]),
        max_output_size_per_class=config.max_detections_per_class,
        max_total_size=config.max_detections,
        iou_threshold=config.nms_iou_threshold,
        score_threshold=config.score_threshold,
        pad_per_class=False,
        clip_boxes=True)
    # combined NMS numbers classes 0..C-1 and pads with 0: shift to 1..C and zero the padding rows.
    valid = tf.range(config.max_detections)[None, :] < num_detections[:, None]      # [B, K]
    classes = tf.where(valid, tf.cast(nms_classes, tf.int32) + 1, fields.BACKGROUND_CLASS)
    return {
        fields.DETECTION_BOXES: nms_boxes,
        fields.DETECTION_SCORES: nms_scores,
        fields.DETECTION_CLASSES: classes,
        fields.NUM_DETECTIONS: tf.cast(num_detections, tf.int32),
    }
