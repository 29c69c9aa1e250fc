"""Frames/s of stream_ssd.py's headless pipeline against the bare model on the same frames.

    python3 -m benchmarks.stream [--width_multiplier 1.0 --num_frames 120 --batch_sizes 1,8 --model_dir logs/]
    python3 -m benchmarks.stream --preset ssdlite320_mobilenet_v3_large --width_multiplier 1.0 --runtime int8

One synthetic video (the sample images resized to --frame_size, MJPG) is timed, in the same run, by:
  forward      the network alone on the frames already resized (batch 1, tf.function; the network's
               first layer normalizes, as in every path);
  detector     the model call the pipeline makes: uint8 frames in memory -> detections (resize,
               network, post-processing in the graph) through the detector door
               (engine.serving.load_detector on a model_dir, as stream_ssd.py opens it), batch 1;
  serial       one thread: decode a frame, detect, draw, encode into the output video, next frame;
  pipeline_bN  apps/video/streaming.py run_headless at batch N: decode, model and draw + encode +
               JSON lines in separate threads.
pipeline / detector near 1 means reading, drawing and writing cost nothing beside the model (they
overlap with it); pipeline / serial is what the threads buy. Random weights (--preset, default SSD300,
20 classes, written as a model_dir in the temporary folder) unless --model_dir. --runtime float32 /
float16 / int8 converts that model to TFLite first (engine/tflite_export.py) and times the interpreter
instead, with --num_threads interpreter threads as stream_ssd.py runs it; its forward row is then the bare
interpreter call on the frame already resized to the file's S x S (what the pipeline's inference thread
runs: the resize happens in its capture thread, apps/video/streaming.py). Each figure is the best of
--repeats rounds; the JSON also gives the load average (os.getloadavg) before and after, as the machine
is shared. The last stdout line is one JSON object.
"""

import json
import os
import tempfile
import time

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from apps.video import sources, streaming  # noqa: E402
from engine import checkpoints, serving, tflite_export  # noqa: E402
from model import presets  # noqa: E402
from nets import ssd  # noqa: E402
from preprocessing import inputs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("width_multiplier", 0.125, "Width of the random model (ignored with --model_dir).")
flags.DEFINE_enum("preset", "ssd300_vgg16", presets.NAMES, "Preset of the random model (ignored with "
                  "--model_dir), e.g. ssdlite320_mobilenet_v3_large.")
flags.DEFINE_string("model_dir", None, "A trained model_dir to time instead of random weights.")
flags.DEFINE_enum("runtime", "checkpoint", ("checkpoint",) + tflite_export.FORMATS,
                  "What the pipeline runs: the checkpoint, or the model converted to that TFLite format "
                  "(int8 calibrated on the clip's frames); with TFLite the forward row is the bare "
                  "interpreter call on the frame.")
flags.DEFINE_integer("num_threads", 1, "TFLite interpreter threads (stream_ssd.py --num_threads).")
flags.DEFINE_integer("num_classes", 20, "C of the random model (VOC: 20).")
flags.DEFINE_integer("num_frames", 32, "Frames of the synthetic video.")
flags.DEFINE_list("frame_size", ["320", "240"], "Width,height of the synthetic video.")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Pipeline batch sizes to time.")
flags.DEFINE_integer("repeats", 3, "Rounds of all measurements; the best of each is reported.")
flags.DEFINE_float("score_threshold", 0.3, "Drawn and listed detections score at least this.")
flags.DEFINE_float("background_bias", 4.0, "Random model: added to the background logit, so that only a "
                   "few detections a frame pass --score_threshold.")

SAMPLE_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "dataset", "sample", "JPEGImages")


def _calibrate_heads(model, image_size, num_classes):
    """Scales each random head to unit output spread on a noise image and raises the background
    logit by --background_bias. Untrained heads give logits in the hundreds: all 200 detections
    score ~1, and drawing 200 captions a frame would dominate every figure; calibrated, a few score
    >= --score_threshold, as with a trained model on a scene of a few objects (the count is reported)."""
    image = tf.random.stateless_normal([1, image_size, image_size, 3], seed=[1, 2], stddev=60.0)
    for layer in model.layers:
        if layer.name.endswith((ssd.CONF_SUFFIX, ssd.LOC_SUFFIX)):
            spread = float(tf.math.reduce_std(keras.Model(model.input, layer.output)(image)))
            kernel, bias = layer.get_weights()
            if layer.name.endswith(ssd.CONF_SUFFIX):  # channels: per box, background then C classes
                bias = bias.copy()
                bias[0::num_classes + 1] += FLAGS.background_bias * spread
            layer.set_weights([kernel / spread, bias / spread])


def _set_batch_norm_statistics(model, image_size):
    """Each BatchNormalization's moving mean and variance from its input on eight sample images: with the
    initial 0 and 1 a random MobileNetV3 is dead (activations 0 from the fourth block on, every head its
    bias), and _calibrate_heads would divide by a spread of 0 (tests/test_export.py does the same)."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return
    names = sorted(n for n in os.listdir(SAMPLE_IMAGES) if n.endswith(".jpg"))[:8]
    images = tf.stack([tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(os.path.join(SAMPLE_IMAGES, n))),
                                       [image_size, image_size]) for n in names])
    for layer, x in zip(norms, keras.Model(model.input, [layer.input for layer in norms])(images, training=True)):
        axes = list(range(len(x.shape) - 1))
        layer.moving_mean.assign(tf.reduce_mean(x, axes))
        layer.moving_variance.assign(tf.math.reduce_variance(x, axes))


def _model_dir(folder):
    """--model_dir, or a model_dir of a random SSD300 with calibrated heads written into `folder`."""
    if FLAGS.model_dir:
        return FLAGS.model_dir
    config = presets.get(FLAGS.preset, FLAGS.num_classes, width_multiplier=FLAGS.width_multiplier)
    keras.utils.set_random_seed(0)
    model = ssd.build(config)
    _set_batch_norm_statistics(model, config.image_size)
    _calibrate_heads(model, config.image_size, FLAGS.num_classes)
    model_dir = os.path.join(folder, "model_dir")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), model_dir, max_to_keep=1).save()
    checkpoints.write(model_dir, config, tuple(f"class_{i}" for i in range(1, FLAGS.num_classes + 1)))
    return model_dir


def _make_video(path, size):
    names = sorted(n for n in os.listdir(SAMPLE_IMAGES) if n.endswith(".jpg"))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    for i in range(FLAGS.num_frames):
        writer.write(cv2.resize(cv2.imread(os.path.join(SAMPLE_IMAGES, names[i % len(names)])), size))
    writer.release()
    capture, frames = cv2.VideoCapture(path), []
    while (item := capture.read())[0]:
        frames.append(cv2.cvtColor(item[1], cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def main(argv):
    del argv
    load_before = os.getloadavg()
    size = (int(FLAGS.frame_size[0]), int(FLAGS.frame_size[1]))
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    with tempfile.TemporaryDirectory(prefix="ssd_stream_bench_") as folder:
        detector = serving.load_detector(_model_dir(folder))
        config, class_names, model = detector.config, detector.class_names, detector.runtime.model
        path = os.path.join(folder, "clip.avi")
        frames = _make_video(path, size)
        count = len(frames)
        side = config.image_size
        resized = inputs.resize(tf.constant(frames), config).numpy()   # float 0-255 [N, S, S, 3]
        if FLAGS.runtime == "checkpoint":
            graph = tf.function(lambda x: model(x, training=False),
                                input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32)])
            forward = lambda i: tf.nest.map_structure(lambda t: t.numpy(), graph(resized[i:i + 1]))  # noqa: E731
        else:
            calibration = list(resized.astype(np.uint8))
            tflite_path = tflite_export.export(detector.runtime, class_names, os.path.join(folder, "tflite"),
                                               formats=(FLAGS.runtime,), calibration=calibration)[FLAGS.runtime]
            detector = serving.load_detector(tflite_path, num_threads=FLAGS.num_threads)
            squares = [tflite_export.resize_uint8(frame, detector.runtime.input_size) for frame in frames]
            forward = lambda i: detector.runtime(squares[i])   # noqa: E731  the bare interpreter call
        for batch in sorted(set(batch_sizes + [1])):  # tracing and first-call allocation, untimed
            detector(frames[:batch])
            forward(0)
        drawn = np.mean([len(found.select(FLAGS.score_threshold)) for found in detector(frames)])
        logging.info("%d frames of %dx%d, %s width %.3f (%s), %.1f detections drawn a frame; timing", count,
                     size[0], size[1], config.name, config.width_multiplier, FLAGS.runtime, drawn)

        def run_forward():
            for i in range(count):
                forward(i)
            return count

        def run_detector():
            for i in range(count):
                detector(frames[i])
            return count

        def run_serial():
            source = sources.open_source(path)
            output = streaming.VideoOutput(os.path.join(folder, "serial.avi"), 25.0)
            done = 0
            while (item := source.read()) is not None:
                drawn = sources.annotate(item[0], detector(item[0]), class_names, FLAGS.score_threshold)
                output.write(drawn)
                done += 1
            output.close()
            return done

        def run_pipeline(batch):
            pipeline = streaming.Pipeline(sources.open_source(path), detector, batch_size=batch)
            summary = streaming.run_headless(pipeline, class_names, os.path.join(folder, "out.jsonl"),
                                                  os.path.join(folder, "out.avi"), FLAGS.score_threshold)
            assert summary["frames"] == count and summary["error"] is None, summary
            return summary["frames"]

        runs = {"forward": run_forward, "detector": run_detector, "serial": run_serial}
        runs.update({f"pipeline_b{b}": (lambda b=b: run_pipeline(b)) for b in batch_sizes})
        fps = dict.fromkeys(runs, 0.0)
        # Round robin, best of --repeats: on a shared machine the load drifts, and interleaving spreads
        # that drift over every measurement instead of one.
        for repeat in range(FLAGS.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                done = run()
                fps[name] = max(fps[name], done / (time.perf_counter() - start))
            logging.info("round %d/%d done", repeat + 1, FLAGS.repeats)
        for name, value in fps.items():
            logging.info("%-12s %.1f frames/s", name, value)
    pipelines = [f"pipeline_b{b}" for b in batch_sizes]
    print(json.dumps({
        "benchmark": "stream_pipeline_vs_model",
        "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
        "preset": config.name, "width_multiplier": config.width_multiplier, "runtime": FLAGS.runtime,
        "weights": FLAGS.model_dir or "random", "frames": count, "frame_size": list(size),
        "repeats": FLAGS.repeats, "num_threads": FLAGS.num_threads, "frames_per_s": fps,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]], "detections_drawn_per_frame": float(drawn),
        "pipeline_over_detector": {p: fps[p] / fps["detector"] for p in pipelines},
        "pipeline_over_forward": {p: fps[p] / fps["forward"] for p in pipelines},
        "pipeline_over_serial": {p: fps[p] / fps["serial"] for p in pipelines},
    }, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
