"""Forward then post-process: the one place the network's outputs become detections.

Used by evaluation (engine/evaluation.make_detect_fn), the training images of TensorBoard
(engine/summaries.py) and the SavedModel's graph (engine/serving.DetectionModule), so the three cannot
drift apart. The TFLite graph keeps its own post-processing (engine/tflite_export.py says why).
"""

from dataset import fields
from model import postprocess


def detect(model, images, anchors, config):
    """Net input [B, S, S, 3] (RGB 0-255, uint8 or float; already resized to S x S) -> model/postprocess.py's
    padded dict: detection_boxes float32 [B, K, 4], detection_scores float32 [B, K], detection_classes
    int32 [B, K], num_detections int32 [B]. `model` is nets.ssd.build's (it normalizes its input
    itself); `anchors` [A, 4] are model.anchors.generate(config)'s."""
    outputs = model(images, training=False)
    return postprocess.postprocess(outputs[fields.CLS_LOGITS], outputs[fields.BOX_CODES], anchors, config)
