"""TensorBoard writing for training and evaluation: named scalars and images with boxes drawn."""

import glob
import os

import numpy as np
import tensorflow as tf

from dataset import fields
from engine import checkpoints, inference
from engine.drawing import GROUND_TRUTH_RGB, MIN_DRAWN_SCORE, draw_boxes, draw_detections
from model import box_coder


def net_input_to_uint8(features):
    """Net input [B, S, S, 3] (RGB 0-255: uint8 from the input functions, or float) -> uint8 images."""
    images = np.asarray(features)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images.astype(np.float32)), 0, 255).astype(np.uint8)


def _ground_truth(labels, anchors, config):
    """Boxes and classes recovered from encoded targets: every positive anchor decodes to its gt box."""
    cls_targets = np.asarray(labels[fields.CLS_TARGETS])
    decoded = box_coder.decode(labels[fields.BOX_TARGETS], anchors, config.variances).numpy()
    out = []
    for image_cls, image_boxes in zip(cls_targets, decoded):
        positive = image_cls > fields.BACKGROUND_CLASS
        boxes, classes = np.round(image_boxes[positive], 4), image_cls[positive]
        unique = np.unique(np.concatenate([boxes, classes[:, None]], axis=1), axis=0)
        out.append((unique[:, :4], unique[:, 4].astype(np.int32)))
    return out


class Writer:
    """A summary writer that does nothing when disabled (non-chief workers)."""

    def __init__(self, logdir, enabled=True):
        self._writer = tf.summary.create_file_writer(logdir) if enabled else None

    def scalars(self, step, values, prefix=""):
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(prefix + name, float(value))

    def images(self, step, name, images):
        if self._writer is None or not len(images):
            return
        with self._writer.as_default(step=step):
            tf.summary.image(name, np.stack(images), max_outputs=len(images))

    def pr_curve(self, step, name, counts, description=None):
        """One TensorBoard pr_curves entry. `counts`: [T] arrays true_positives, false_positives,
        true_negatives, false_negatives, precision, recall at T score thresholds 0 .. 1
        (metrics/analysis.pr_curve_counts). Written as the plugin's raw-data Summary protobuf: the
        plugin's summary ops are TF1 graph ops, so the proto goes in through write_raw_pb, into the same
        event files as the scalars."""
        if self._writer is None:
            return
        from tensorboard.plugins.pr_curve import summary as pr_summary

        proto = pr_summary.raw_data_pb(
            name, true_positive_counts=counts["true_positives"],
            false_positive_counts=counts["false_positives"],
            true_negative_counts=counts["true_negatives"], false_negative_counts=counts["false_negatives"],
            precision=counts["precision"], recall=counts["recall"],
            num_thresholds=len(counts["precision"]), description=description)
        with self._writer.as_default(step=step):
            tf.summary.experimental.write_raw_pb(proto.SerializeToString(), step=step)

    def detection_images(self, step, name, model, batch, anchors, config, class_names,
                         min_score=MIN_DRAWN_SCORE):
        """Training inputs with ground truth (white) and the current detections (class colours, score >= min_score)."""
        if self._writer is None:
            return
        features, labels = batch
        detections = inference.detect(model, features, anchors, config)
        drawn = []
        for i, (image, (gt_boxes, gt_classes)) in enumerate(zip(net_input_to_uint8(features),
                                                                 _ground_truth(labels, anchors, config))):
            image = draw_boxes(image, gt_boxes, gt_classes, class_names, color=GROUND_TRUTH_RGB)
            drawn.append(draw_detections(image, detections[fields.DETECTION_BOXES][i],
                                         detections[fields.DETECTION_SCORES][i],
                                         detections[fields.DETECTION_CLASSES][i], class_names, min_score))
        self.images(step, name, drawn)

    def flush(self):
        """Writes what is buffered: before each checkpoint, so a kill loses no step it keeps."""
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def purge_past_checkpoint(model_dir):
    """`purge_after` on train/ and eval/ of `model_dir` with the step of its latest checkpoint (0 when
    none: a run killed before its first checkpoint starts again from step 1). Call it before a writer
    opens a new event file there."""
    latest = tf.train.latest_checkpoint(model_dir)
    step = checkpoints.checkpoint_step(latest) if latest else 0
    return sum(purge_after(os.path.join(model_dir, folder), step) for folder in ("train", "eval"))


def purge_after(logdir, step):
    """Drops the events past `step` from the event files of `logdir` (and a last record cut short by a
    kill); returns the number of events dropped.

    A run killed after step N's scalars but before its next checkpoint resumes at that checkpoint's
    step k < N and writes steps k+1..N again. TF2 summary writers record no purge marker (TF1's
    SessionLog START), so TensorBoard would show those steps twice: the resumed run calls this with k
    first. Each file that changes is rewritten beside itself and renamed over it (a kill meanwhile
    leaves it whole).
    """
    # Not named like an event file: TensorBoard reads every file whose name holds "tfevents".
    staged = os.path.join(logdir, "purging.tmp")
    if os.path.exists(staged):   # a kill during an earlier purge: its file was not renamed yet
        os.remove(staged)
    dropped = 0
    for path in sorted(glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*"))):
        kept, changed = [], False
        try:
            for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
                if tf.compat.v1.Event.FromString(record).step > step:
                    dropped, changed = dropped + 1, True
                else:
                    kept.append(record)
        except tf.errors.DataLossError:   # the last record, cut short by a kill
            changed = True
        if not changed:
            continue
        with tf.io.TFRecordWriter(staged) as writer:
            for record in kept:
                writer.write(record)
        os.replace(staged, path)
    return dropped
