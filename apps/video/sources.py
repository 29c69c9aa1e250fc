"""Video in, detections out: frame sources (OpenCV), the model opened through the detector door, what
is drawn and listed per frame.

Sources (`open_source`), told apart by the text of --source:

  "0", "1", ...                 a webcam index                  live: stale frames are dropped
  "rtsp://...", "http://..."    a network stream                live; reconnects with back-off
  a folder                      its images, sorted by name      every frame, as fast as the model goes
  anything else                 a video file                    every frame, as fast as the model goes

Every frame leaves a source as uint8 [H, W, 3] RGB (OpenCV's BGR is converted once, at the edge).
apps/video/streaming.py runs sources and models in threads; apps/video/viewer.py is the window.

The model is an engine.serving.Detector (`open_model`: the door, engine.serving.load_detector, with a
failure told as one ValueError): a model_dir, a checkpoint, a SavedModel or a .tflite file, called on a
batch of uint8 frames [B, H, W, 3], returning one serving.Detections (trimmed rows) per frame.
"""

import os
import time

from absl import logging

# FFmpeg's own lines ("moov atom not found", "Connection refused") would come before ours, which name
# the source and the problem; set these variables before starting to see FFmpeg's diagnostics.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # AV_LOG_QUIET
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
import cv2  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# Output containers and the codec each gets: opencv-python-headless's FFmpeg has no H.264 encoder
# (licensing), so MP4 gets MPEG-4 part 2, which every common player reads.
FOURCC_BY_EXTENSION = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
DEFAULT_OUTPUT_FPS = 25.0


class SourceError(OSError):
    """A source that cannot be opened or read any more; the message names it and the problem. An
    OSError, so a script's edge (engine/cli.run) tells it in one line like any other I/O mistake."""


# --- Sources -------------------------------------------------------------------------------------------

class CaptureSource:
    """A webcam, video file or network stream read with cv2.VideoCapture.

    read() -> (frame uint8 [H, W, 3] RGB, position in seconds or None), or None at the end of a file.
    Cameras and streams that stop delivering are reopened up to `max_reconnects` times, waiting
    backoff_s, 2 backoff_s, ... (at most max_backoff_s) between tries; a frame read resets the count.
    Then SourceError. `open_capture(spec)` makes the capture (injectable for tests).
    """

    def __init__(self, spec, kind, max_reconnects=5, backoff_s=0.5, max_backoff_s=8.0, timeout_s=5.0,
                 open_capture=None, sleep=time.sleep):
        self.spec, self.kind = spec, kind
        self.name = f"camera {spec}" if kind == "camera" else str(spec)
        self.live = kind in ("camera", "url")
        self.status = ""
        self._max_reconnects, self._backoff_s, self._max_backoff_s = max_reconnects, backoff_s, max_backoff_s
        self._sleep = sleep
        self._open_capture = open_capture or (lambda s: _open_cv_capture(s, kind, timeout_s))
        self._frames_read = 0
        if kind == "file" and not os.path.isfile(spec):
            raise SourceError(f"{spec}: no such video file")
        self._capture = self._open_capture(spec)
        if not self._capture.isOpened():
            self._capture.release()
            if kind == "camera":  # A stream server may come up in a moment; a missing camera will not.
                raise SourceError(f"camera {spec} did not open (no such device, no permission, or in use "
                                  "by another program)")
            if not self.live:
                raise SourceError(f"{spec}: OpenCV cannot open it as a video (corrupt, or a format its "
                                  "FFmpeg does not read)")
            self._capture = None
            self._reconnect(f"{self.name} did not open")
        self._pending = None
        if not self.live:  # A file whose header opens but whose first frame does not decode is corrupt.
            self._pending = self._read_frame()
            if self._pending is None:
                raise SourceError(f"{spec}: not a single frame could be decoded (corrupt video?)")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if kind == "file" and count > 0 else None

    def _read_frame(self):
        ok, frame = self._capture.read()
        if not ok or frame is None or frame.size == 0:
            return None
        position = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.kind == "file" else None
        return _to_rgb(frame), position

    def _reconnect(self, why):
        delay = self._backoff_s
        for attempt in range(1, self._max_reconnects + 1):
            self.status = f"{why}; reconnect {attempt}/{self._max_reconnects} in {delay:.1f} s"
            logging.warning("%s", self.status)
            self._sleep(delay)
            if self._capture is not None:
                self._capture.release()
            self._capture = self._open_capture(self.spec)
            if self._capture.isOpened():
                self._pending = self._read_frame()
                if self._pending is not None:
                    self.status = ""
                    logging.info("%s: reconnected", self.name)
                    return
            delay = min(2 * delay, self._max_backoff_s)
        self.status = f"{why}; gave up after {self._max_reconnects} reconnects"
        raise SourceError(f"{why} after {self._frames_read} frames and {self._max_reconnects} "
                          "reconnects failed")

    def read(self):
        result, self._pending = self._pending, None
        if result is None:
            result = self._read_frame()
        if result is None and self.live:
            self._reconnect(f"{self.name} stopped delivering frames")
            result, self._pending = self._pending, None
        if result is None:
            if self.frame_count and self._frames_read < self.frame_count - 1:
                logging.warning("%s ended after %d of the %d frames its header announces (truncated or "
                                "corrupt?)", self.name, self._frames_read, self.frame_count)
            return None
        self._frames_read += 1
        return result

    def close(self):
        if self._capture is not None:
            self._capture.release()


def _open_cv_capture(spec, kind, timeout_s):
    if kind == "camera":
        return cv2.VideoCapture(int(spec))
    if kind == "url":  # Without these a dead stream blocks FFmpeg for its default 30 s.
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(spec, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return cv2.VideoCapture(spec)


def _to_rgb(frame):
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class FolderSource:
    """The images of a folder, sorted by name; an unreadable one is named in a warning and skipped."""

    live = False
    fps = None
    status = ""

    def __init__(self, folder):
        self.name = folder
        self._paths = sorted(os.path.join(folder, n) for n in os.listdir(folder)
                             if n.lower().endswith(IMAGE_EXTENSIONS))
        if not self._paths:
            raise SourceError(f"{folder}: no {'/'.join(IMAGE_EXTENSIONS)} images in this folder")
        self.frame_count = len(self._paths)
        self.skipped = []
        self._next = 0

    def read(self):
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is not None:
                return _to_rgb(image), None
            logging.warning("skipping %s: not a readable image", path)
            self.skipped.append(path)
        return None

    def close(self):
        pass


def source_kind(spec):
    """'camera', 'url', 'folder' or 'file' for the text of --source."""
    text = str(spec).strip()
    if text.isdigit():
        return "camera"
    if text.lower().startswith(URL_SCHEMES):
        return "url"
    return "folder" if os.path.isdir(text) else "file"


def open_source(spec, **capture_options):
    """The source named by `spec` (module docstring); SourceError when it cannot be opened."""
    kind = source_kind(spec)
    if kind == "folder":
        return FolderSource(spec)
    return CaptureSource(str(spec).strip(), kind, **capture_options)


# --- Model ---------------------------------------------------------------------------------------------

def open_model(path, num_threads=None):
    """engine.serving.load_detector(path, num_threads) (the one door; any model kind; `num_threads`: the
    TFLite interpreter's or ONNX Runtime's threads); a model that cannot be loaded raises ValueError naming
    `path` and the problem (stream_ssd.py's one-line message)."""
    from engine import serving  # imports TensorFlow: not needed to tell a bad --source in a second

    try:
        return serving.load_detector(path, num_threads=num_threads)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot load the model ({e})") from None


# --- What is drawn and written -------------------------------------------------------------------------

def annotate(frame, detections, class_names, min_score, class_ids=None):
    """uint8 [H, W, 3] copy of `frame` with the detections (serving.Detections) scoring >= min_score
    whose class is in `class_ids` (all when None) drawn (engine/drawing.py)."""
    from engine import drawing  # imports TensorFlow: not needed to tell a bad --source in a second

    shown = detections.select(min_score, class_ids)
    return drawing.draw_detections(frame, shown.boxes, shown.scores, shown.classes, class_names,
                                   min_score=min_score)


def json_record(result, class_names, min_score, class_ids=None):
    """One JSON-ready dict per frame (a streaming.FrameResult): its number, position and model latency,
    and engine.serving.detections_record's size and selected detections (detect_ssd.py's form)."""
    from engine import serving

    height, width = result.frame.shape[:2]
    return {"frame": result.index, "position_s": result.position_s, "latency_s": round(result.latency_s, 6),
            **serving.detections_record(result.detections, class_names, height, width, min_score, class_ids)}
