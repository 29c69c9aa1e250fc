"""Run SSD on a webcam, a video file, a network stream or an image folder: a Qt window, or headless.

    python3 stream_ssd.py --model exported/ --source 0                          # webcam 0, window
    python3 stream_ssd.py --model_dir logs/sample --source clip.mp4              # video file, window
    python3 stream_ssd.py --model exported/ --source rtsp://cam.local/stream --no_display \
        --output annotated.mp4 --jsonl detections.jsonl                         # headless

The window (apps/video/viewer.py, PySide6) shows the feed with detections drawn, frames/s and model
latency, a score-threshold slider, a class filter, pause and a snapshot button (PNG in --snapshot_dir).
Headless (--no_display) writes one JSON line per frame (--jsonl; "-" for stdout) and an annotated video
(--output, .mp4 or .avi), both renamed into place when the run ends (also on Ctrl-C), and prints a
summary JSON line last. Frames of live sources are dropped when the model is slower than the camera; files
and folders are processed frame by frame (apps/video/streaming.py).

A source or model that cannot be opened: one line naming it, exit status 2 (engine/cli.py). A stream
that drops is reopened with back-off (--max_reconnects, --reconnect_backoff_s); when that fails the
window stays up with the message, and the exit status is 2 after one line.
"""

import json
import os
import sys

from absl import flags, logging

from engine import cli

flags.DEFINE_string("source", None, "Webcam index (0), video file, rtsp:// or http(s):// URL, or an image "
                    "folder.")
flags.DEFINE_string("model", None, "Any model the detector door opens: an export_saved_model.py folder, a .tflite "
                    "file, a training model_dir or a checkpoint prefix ckpt-N.")
flags.DEFINE_string("model_dir", None, "A training model_dir (its latest checkpoint), instead of --model.")
flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix (ckpt-N), instead of --model.")
flags.DEFINE_bool("no_display", False, "Headless: no window; write --output and/or --jsonl.")
flags.DEFINE_string("output", None, "Headless: the annotated video (.mp4 or .avi).")
flags.DEFINE_string("jsonl", None, "Headless: one JSON line of detections per frame; '-' for stdout.")
flags.DEFINE_float("score_threshold", 0.3, "Detections scoring below this are neither drawn nor listed "
                   "(the window's slider starts here).")
flags.DEFINE_list("classes", None, "Class names to show (default: all).")
flags.DEFINE_integer("batch_size", 1, "Frames per model call (more can be faster on a GPU, adds latency).")
flags.DEFINE_integer("num_threads", 1, "Threads of a .tflite or .onnx model's interpreter. 1: the other "
                     "core(s) decode, resize, draw and encode the neighbouring frames meanwhile "
                     "(docs/video.md#speed).")
flags.DEFINE_integer("max_frames", 0, "Stop after this many frames (0: at the end of the source).")
flags.DEFINE_float("output_fps", 0.0, "Frame rate of --output (0: the source's, else 25).")
flags.DEFINE_integer("max_reconnects", 5, "Reopen tries of a camera or stream that stops delivering.")
flags.DEFINE_float("reconnect_backoff_s", 0.5, "Wait before the first reopen; doubles at each try.")
flags.DEFINE_float("max_backoff_s", 8.0, "Longest wait between reopen tries.")
flags.DEFINE_float("stream_timeout_s", 5.0, "Open and read timeout of a network stream.")
flags.DEFINE_string("snapshot_dir", "snapshots", "Where the window's Snapshot button saves PNGs.")
flags.DEFINE_bool("close_at_end", False, "Close the window when a file or folder ends (else it stays on "
                  "the last frame).")
FLAGS = flags.FLAGS


def _class_ids(names, class_names):
    if not names:
        return None
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ValueError(f"--classes: {', '.join(unknown)} not in the model's label map "
                         f"({', '.join(class_names)})")
    return {class_names.index(n) + 1 for n in names}


def _check_display():
    """A window needs a display: say so in one line rather than letting Qt abort."""
    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        raise ValueError("no display to open a window on: run with --no_display (and --output/--jsonl), "
                         "or set QT_QPA_PLATFORM=offscreen")


def main(argv):
    del argv
    # Flag mistakes are told before TensorFlow and OpenCV are imported (seconds).
    if not (FLAGS.model or FLAGS.model_dir or FLAGS.checkpoint_path):
        raise ValueError("name a model: --model (SavedModel folder or .tflite) or --model_dir")
    if FLAGS.num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, not {FLAGS.num_threads}")
    if FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, not {FLAGS.batch_size}")
    if not FLAGS.no_display:
        _check_display()
    from apps.video import sources, streaming

    # Mistakes (a bad --output, a source that does not open, a model that does not load) raise
    # ValueError / OSError (SourceError): engine/cli.run tells them in one line.
    if FLAGS.output and os.path.splitext(FLAGS.output)[1].lower() not in sources.FOURCC_BY_EXTENSION:
        raise ValueError(f"--output {FLAGS.output}: the file name must end in one of "
                         f"{', '.join(sorted(sources.FOURCC_BY_EXTENSION))}")
    source = sources.open_source(FLAGS.source, max_reconnects=FLAGS.max_reconnects,
                                 backoff_s=FLAGS.reconnect_backoff_s, max_backoff_s=FLAGS.max_backoff_s,
                                 timeout_s=FLAGS.stream_timeout_s)
    detector = sources.open_model(FLAGS.model or FLAGS.checkpoint_path or FLAGS.model_dir, FLAGS.num_threads)
    class_ids = _class_ids(FLAGS.classes, detector.class_names)
    logging.info("%s with %s (%s)", source.name, detector.path, "live" if source.live else "every frame")
    pipeline = streaming.Pipeline(source, detector, FLAGS.batch_size, FLAGS.max_frames)

    if not FLAGS.no_display:
        from apps.video import viewer
        failure = viewer.run(pipeline, detector.class_names, FLAGS.score_threshold, class_ids, FLAGS.snapshot_dir,
                             FLAGS.close_at_end)
        if failure:
            raise OSError(f"the source failed: {failure}")
        return cli.EXIT_OK
    summary = streaming.run_headless(pipeline, detector.class_names, FLAGS.jsonl, FLAGS.output,
                                     FLAGS.score_threshold, class_ids, FLAGS.output_fps)
    logging.info("%d frames in %.1f s (%.1f frames/s; the model alone %.1f frames/s), %d dropped, "
                 "%d resized", summary["frames"], summary["wall_s"], summary["frames_per_s"],
                 summary["model_frames_per_s"], summary["frames_dropped"], summary["frames_resized"])
    if FLAGS.jsonl != "-":
        print(json.dumps(summary, sort_keys=True))
    if summary["error"]:
        raise OSError(summary["error"])
    return cli.EXIT_OK


if __name__ == "__main__":
    flags.mark_flag_as_required("source")
    cli.run(main)
