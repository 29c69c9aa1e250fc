"""Export a trained SSD as TFLite files (float32, float16, int8) with resizing, normalization and
post-processing inside (engine/tflite_export.py), run by the standard LiteRT interpreter.

    python3 export_tflite.py --model_dir logs/sample --output_dir exported/tflite --data_dir dataset/tfrecords
    python3 export_tflite.py --checkpoint_path logs/ckpt-2000 --output_dir exported/tflite --formats float32
    python3 export_tflite.py --model_dir logs/sample --output_dir exported/tflite --evaluate_split val
    python3 export_tflite.py --model_dir logs/sample --output_dir exported/tflite_any --dynamic_input

Writes model_float32.tflite, model_float16.tflite, model_int8.tflite and, beside them, the
label_map.pbtxt and config.json the model was trained with. int8 is calibrated on the first
--num_calibration_records images of --calibration_split in --data_dir. Each file takes input_tensor
uint8 [1, S, S, 3] (S: --input_size, default the preset's size) and returns the SavedModel's outputs
(detection_boxes, detection_scores, detection_classes, num_detections), and carries TFLite Metadata
and its label file, so MediaPipe's ObjectDetector runs it as it is. --dynamic_input writes today's
any-size uint8 [1, H, W, 3] files instead (no metadata: for this project's own Detector). In Python,
engine.serving.load_detector(path) opens one behind the detector contract every kind shares.
--evaluate_split also reports the VOC mAP of the checkpoint and of every file on that split, each
opened through that door.
"""


from absl import flags, logging

from engine import cli

flags.DEFINE_string("model_dir", "logs/", "Training model_dir; its latest checkpoint is exported.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N) to export instead of the latest.")
flags.DEFINE_string("output_dir", None, "Folder for the .tflite files (replaced if it is a TFLite export).")
flags.DEFINE_list("formats", ["float32", "float16", "int8"], "Formats to write: float32, float16, int8.")
flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Record shards for int8 calibration and --evaluate_split.")
flags.DEFINE_string("calibration_split", "train", "Split whose first records calibrate int8.")
flags.DEFINE_integer("num_calibration_records", 100, "Images int8 is calibrated on.")
flags.DEFINE_integer("input_size", None, "Side S of the fixed uint8 [1, S, S, 3] input (default: the "
                     "preset's image size; the graph resizes S to it).")
flags.DEFINE_bool("dynamic_input", False, "Any-size [1, H, W, 3] input and no metadata (our own Detector "
                  "only: MediaPipe needs a fixed input).")
flags.DEFINE_string("evaluate_split", None, "If set, VOC mAP of the checkpoint and each file on this split.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from engine import serving, tflite_export

    unknown = sorted(set(FLAGS.formats) - set(tflite_export.FORMATS))
    if unknown:
        raise ValueError(f"--formats: unknown {', '.join(unknown)}; known: {', '.join(tflite_export.FORMATS)}")
    if FLAGS.dynamic_input and FLAGS.input_size:
        raise ValueError("--input_size fixes the input: leave it out with --dynamic_input")
    if FLAGS.input_size is not None and FLAGS.input_size <= 0:
        raise ValueError(f"--input_size must be positive, got {FLAGS.input_size}")
    if FLAGS.num_calibration_records <= 0 and "int8" in FLAGS.formats:
        raise ValueError("--num_calibration_records must be positive for int8")
    calibration = None
    if "int8" in FLAGS.formats:
        calibration = tflite_export.calibration_images(FLAGS.data_dir, FLAGS.calibration_split,
                                                       FLAGS.num_calibration_records)
    module, config, class_names, checkpoint = serving.from_checkpoint(FLAGS.model_dir, FLAGS.checkpoint_path)
    paths = tflite_export.export(module, class_names, FLAGS.output_dir, FLAGS.formats, calibration,
                                 input_size=FLAGS.input_size, dynamic_input=FLAGS.dynamic_input)
    logging.info("exported %s (%s, %d classes) to %s", checkpoint, config.name, config.num_classes,
                 ", ".join(paths.values()))
    if FLAGS.evaluate_split:
        serving.log_evaluations({"checkpoint": checkpoint, **paths}, FLAGS.data_dir, FLAGS.evaluate_split)


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
