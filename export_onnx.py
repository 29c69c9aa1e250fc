"""Export a trained SSD as ONNX files (float32, int8) with resizing, normalization and post-processing
inside (engine/onnx_export.py: the TFLite graph converted by tf2onnx at opset 17), for ONNX Runtime
(CPU, CUDA, TensorRT providers), OpenCV >= 5.1 DNN and OpenVINO.

    python3 export_onnx.py --model_dir logs/sample --output_dir exported/onnx --data_dir dataset/tfrecords
    python3 export_onnx.py --checkpoint_path logs/ckpt-2000 --output_dir exported/onnx --formats float32
    python3 export_onnx.py --model_dir logs/sample --output_dir exported/onnx --evaluate_split val

Writes model_float32.onnx, model_int8.onnx and, beside them, the label_map.pbtxt and config.json the
model was trained with. int8 (ONNX Runtime static quantization of the convolutions; decode, softmax and
NMS stay float32) is calibrated on the first --num_calibration_records images of --calibration_split in
--data_dir. Each file takes input_tensor uint8 [1, H, W, 3] of any size and returns the SavedModel's
outputs by name (detection_boxes, detection_scores, detection_classes, num_detections); in Python,
engine.serving.load_detector(path) opens one with ONNX Runtime behind the one detector contract.
--evaluate_split also reports the VOC mAP of the checkpoint and of every file on that split.
"""


from absl import flags, logging

from engine import cli

flags.DEFINE_string("model_dir", "logs/", "Training model_dir; its latest checkpoint is exported.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N) to export instead of the latest.")
flags.DEFINE_string("output_dir", None, "Folder for the .onnx files (replaced if it is an ONNX export).")
flags.DEFINE_list("formats", ["float32", "int8"], "Formats to write: float32, int8.")
flags.DEFINE_string("data_dir", cli.DEFAULT_DATA_DIR, "Record shards for int8 calibration and --evaluate_split.")
flags.DEFINE_string("calibration_split", "train", "Split whose first records calibrate int8.")
flags.DEFINE_integer("num_calibration_records", 100, "Images int8 is calibrated on.")
flags.DEFINE_string("evaluate_split", None, "If set, VOC mAP of the checkpoint and each file on this split.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from engine import onnx_export, serving, tflite_export

    unknown = sorted(set(FLAGS.formats) - set(onnx_export.FORMATS))
    if unknown:
        raise ValueError(f"--formats: unknown {', '.join(unknown)}; known: {', '.join(onnx_export.FORMATS)}")
    if FLAGS.num_calibration_records <= 0 and "int8" in FLAGS.formats:
        raise ValueError("--num_calibration_records must be positive for int8")
    calibration = None
    if "int8" in FLAGS.formats:
        calibration = tflite_export.calibration_images(FLAGS.data_dir, FLAGS.calibration_split,
                                                       FLAGS.num_calibration_records)
    module, config, class_names, checkpoint = serving.from_checkpoint(FLAGS.model_dir, FLAGS.checkpoint_path)
    paths = onnx_export.export(module, class_names, FLAGS.output_dir, FLAGS.formats, calibration)
    logging.info("exported %s (%s, %d classes) to %s", checkpoint, config.name, config.num_classes,
                 ", ".join(paths.values()))
    if FLAGS.evaluate_split:
        serving.log_evaluations({"checkpoint": checkpoint, **paths}, FLAGS.data_dir, FLAGS.evaluate_split)


if __name__ == "__main__":
    flags.mark_flag_as_required("output_dir")
    cli.run(main)
