"""Export a trained SSD as a SavedModel with pre- and post-processing in the graph (engine/serving.py).

    python3 export_saved_model.py --model_dir logs/ --output_dir exported/ssd300
    python3 export_saved_model.py --checkpoint_path logs/ckpt-120000 --output_dir exported/ssd300

The export holds saved_model.pb + variables/, and beside them the config.json and label_map.pbtxt the
model was trained with. It is called as TF Object Detection API exports are:

    detect_fn = tf.saved_model.load("exported/ssd300")
    detect_fn(images)                                               # uint8 [B, H, W, 3]
    detect_fn.signatures["serving_default"](input_tensor=images)
    detect_fn.signatures["serving_encoded"](encoded_images=tf.constant([jpeg_bytes]))

and returns the OD API's names and float32 dtypes (detection_boxes, detection_scores,
detection_classes, num_detections), padded to config.max_detections rows. For TFLite files see
export_tflite.py; in Python, engine.serving.load_detector(path) opens any of them (and a checkpoint)
behind one contract with the padding trimmed.
"""

from absl import flags, logging

from engine import cli

flags.DEFINE_string("model_dir", "logs/", "Training model_dir; its latest checkpoint is exported.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N) to export instead of the latest.")
flags.DEFINE_string("output_dir", None, "Folder to write the SavedModel into (replaced if it is an export).")
flags.DEFINE_enum("dtype_policy", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy the network is built with; outputs stay float32.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from engine import serving

    module, config, class_names, checkpoint = serving.from_checkpoint(
        FLAGS.model_dir, FLAGS.checkpoint_path, FLAGS.dtype_policy)
    path = serving.export(module, class_names, FLAGS.output_dir)
    logging.info("exported %s (%s, %d classes, %s) to %s", checkpoint, config.name, config.num_classes,
                 FLAGS.dtype_policy, path)


if __name__ == "__main__":
    # Marked here, not at import: tests import this module beside other scripts sharing absl's FLAGS.
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
