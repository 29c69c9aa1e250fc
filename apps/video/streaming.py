"""The threaded video pipeline (capture -> inference -> consumer) and the headless runner.

    capture thread    source.read() -> size guard -> model input -> frame queue (bounded)
    inference thread  frame queue -> batches of up to batch_size -> serving.Detector -> result queue (bounded)
    consumer          Pipeline.get(): the Qt window (apps/video/viewer.py) or run_headless below

A live source (camera, stream) drops the oldest waiting frame when the frame queue is full, so the
model always gets the newest frames and the shown latency stays at most a batch behind the camera; a
file or folder waits instead, so every frame is processed. The result queue never drops: a slow
consumer holds back inference, which makes a live capture drop and a file reader wait.

All frames of a stream must have one size (batches stack them, the output video has one size): a frame
of another size is resized to the first frame's size, with one warning naming the source and sizes.

A model of fixed input size S (a TFLite file: its runner's input_size) gets each frame resized to S x S
in the capture thread, with the resize the detector door would apply itself (engine/tflite_export.py
resize_uint8), so the detections are the same and the resize overlaps the previous frame's model call
instead of adding to it; the frame as read is what is drawn and returned.
"""

import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from absl import logging

from apps.video import sources


@dataclass
class FrameResult:
    index: int                    # 0-based number in reading order (dropped frames keep theirs)
    frame: np.ndarray             # uint8 [H, W, 3] RGB, as the model saw it
    detections: object            # engine.serving.Detections of this frame (trimmed rows)
    latency_s: float              # model time of the frame's batch
    position_s: Optional[float]   # time in the video file; None for cameras, streams and folders


@dataclass
class Ended:
    error: Optional[str]          # SourceError's message when the source failed, else None


class RateMeter:
    """Events per second over the last `window_s` seconds, or since start() when that is more recent
    (the frames/s shown while running; it falls to 0 while nothing happens, e.g. paused)."""

    def __init__(self, window_s=2.0, clock=time.perf_counter):
        self._window_s, self._clock, self._times = window_s, clock, collections.deque()
        self._start = clock()

    def start(self):
        self._start, self._times = self._clock(), collections.deque()

    def tick(self):
        self._times.append(self._clock())

    def rate(self):
        now = self._clock()
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()
        span = min(self._window_s, now - self._start)
        return len(self._times) / span if span > 0 else 0.0


class _Queue:
    """A bounded FIFO whose put either waits for room or drops the oldest item (counted)."""

    def __init__(self, maxsize):
        self._items, self._maxsize = collections.deque(), maxsize
        self._cond = threading.Condition()
        self.finished = False   # the producer is done: nothing more will be put
        self.closed = False     # the consumer is gone: stop producing
        self.dropped = 0

    def put(self, item, drop_oldest):
        with self._cond:
            while len(self._items) >= self._maxsize and not drop_oldest and not self.closed:
                self._cond.wait()
            if self.closed:
                return
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, count, wait_for_all, timeout=None):
        """Up to `count` items; waits for one (or `count` if wait_for_all) unless finished. [] at the end
        or on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self.closed and not self.finished and len(self._items) < (count if wait_for_all else 1):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            items = [self._items.popleft() for _ in range(min(count, len(self._items)))]
            self._cond.notify_all()
            return items

    def finish(self):
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def close(self):
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def empty(self):
        with self._cond:
            return not self._items


class Pipeline:
    """Capture and inference threads over `source` and `detector` (an engine.serving.Detector, or
    anything with its call and `path`; module docstring).

    get(timeout) -> FrameResult, then one Ended after the last frame; None when nothing came in time.
    `paused` stops inference (a live capture keeps dropping, so resuming shows the present).
    """

    def __init__(self, source, detector, batch_size=1, max_frames=0):
        self.source, self.detector = source, detector
        self.batch_size, self.max_frames = batch_size, max_frames
        self._frames = _Queue(batch_size if source.live else 2 * batch_size)
        self._results = _Queue(2 * batch_size)
        self._resume = threading.Event()
        self._resume.set()
        self._error = None
        self._ended_sent = False
        self.frames_read = self.frames_done = self.frames_resized = 0
        self.model_seconds = 0.0
        self.latencies = collections.deque(maxlen=1000)   # per frame: its batch's model time
        self.fps = RateMeter()
        # S of a fixed-input model (TFLite), else None: the graph resizes (module docstring).
        self.model_size = getattr(detector.runtime, "input_size", None)
        self._threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                         threading.Thread(target=self._infer, name="inference", daemon=True)]

    @property
    def frames_dropped(self):
        return self._frames.dropped

    @property
    def paused(self):
        return not self._resume.is_set()

    @paused.setter
    def paused(self, value):
        (self._resume.clear if value else self._resume.set)()

    def start(self):
        self.fps.start()
        for thread in self._threads:
            thread.start()
        return self

    def _capture(self):
        size = None
        if self.model_size:
            from engine import tflite_export  # imports TensorFlow; only a fixed-input model needs it
        try:
            while not self._frames.closed and not (self.max_frames and self.frames_read >= self.max_frames):
                item = self.source.read()
                if item is None:
                    break
                frame, position = item
                if size is None:
                    size = frame.shape[:2]
                elif frame.shape[:2] != size:
                    if not self.frames_resized:
                        logging.warning("%s: frame %d is %dx%d but the stream started at %dx%d; such frames "
                                        "are resized to %dx%d", self.source.name, self.frames_read,
                                        frame.shape[1], frame.shape[0], size[1], size[0], size[1], size[0])
                    self.frames_resized += 1
                    frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                model_input = tflite_export.resize_uint8(frame, self.model_size) if self.model_size else frame
                self._frames.put((self.frames_read, frame, model_input, position), drop_oldest=self.source.live)
                self.frames_read += 1
        except sources.SourceError as e:
            self._error = str(e)
        finally:
            self._frames.finish()

    def _infer(self):
        try:
            while not self._results.closed:
                self._resume.wait()
                batch = self._frames.get(self.batch_size, wait_for_all=not self.source.live)
                if not batch:
                    break
                start = time.perf_counter()
                detections = self.detector(np.stack([model_input for _, _, model_input, _ in batch]))  # one call
                seconds = time.perf_counter() - start
                self.model_seconds += seconds
                for (index, frame, _, position), found in zip(batch, detections):
                    self.latencies.append(seconds)
                    self._results.put(FrameResult(index, frame, found, seconds, position), drop_oldest=False)
        except Exception as e:  # noqa: BLE001  (a model failure ends the stream with its message)
            self._error = f"{self.detector.path}: inference failed: {e}"
            logging.exception("inference failed")
            self._frames.close()
        finally:
            self._results.finish()

    def get(self, timeout=None):
        items = self._results.get(1, wait_for_all=False, timeout=timeout)
        if items:
            result = items[0]
            self.frames_done += 1
            self.fps.tick()
            return result
        if self._results.finished and self._results.empty() and not self._ended_sent:
            self._ended_sent = True
            return Ended(self._error)
        return None

    def stop(self):
        self._frames.close()
        self._results.close()
        self._resume.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.source.close()

    def latency_s(self):
        """Median model latency (the model time of a frame's batch) over the last 1,000 frames, seconds;
        0 before the first."""
        return statistics.median(self.latencies) if self.latencies else 0.0


# --- Headless ------------------------------------------------------------------------------------------

class _AtomicOutput:
    """A file written under a temporary name in its folder and renamed into place by commit()."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        stem, extension = os.path.splitext(os.path.basename(self.path))
        # The extension stays last: OpenCV picks the container from it.
        fd, self.temp_path = tempfile.mkstemp(dir=folder, prefix=f".{stem}.partial-", suffix=extension)
        os.close(fd)

    def commit(self):
        os.replace(self.temp_path, self.path)

    def discard(self):
        if os.path.exists(self.temp_path):
            os.remove(self.temp_path)


class VideoOutput:
    """Annotated RGB frames -> a video file (codec by extension, FOURCC_BY_EXTENSION), opened at the
    first frame's size; committed atomically by close()."""

    def __init__(self, path, fps):
        extension = os.path.splitext(path)[1].lower()
        if extension not in sources.FOURCC_BY_EXTENSION:
            raise ValueError(f"--output {path}: the file name must end in one of "
                             f"{', '.join(sorted(sources.FOURCC_BY_EXTENSION))}")
        self._fourcc = cv2.VideoWriter_fourcc(*sources.FOURCC_BY_EXTENSION[extension])
        self._file, self._fps, self._writer = _AtomicOutput(path), fps, None
        self.frames = 0

    def write(self, frame):
        if self._writer is None:
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(self._file.temp_path, self._fourcc, self._fps, (width, height))
            if not self._writer.isOpened():
                self._file.discard()
                raise OSError(f"{self._file.path}: OpenCV cannot write a {width}x{height} video here")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self, keep=True):
        if self._writer is not None:
            self._writer.release()
        if keep and self.frames:
            self._file.commit()
        else:
            self._file.discard()


def run_headless(pipeline, class_names, jsonl=None, output=None, min_score=0.3, class_ids=None,
                 output_fps=0.0, progress_s=10.0):
    """Consumes `pipeline` (not yet started): one JSON line per frame into `jsonl` ("-": stdout) and the
    annotated frames into the video `output`. Returns a summary dict; its "error" is the source's
    failure message or None. What was written before a failure is kept."""
    fps = output_fps or pipeline.source.fps or sources.DEFAULT_OUTPUT_FPS
    writer = VideoOutput(output, fps) if output else None
    lines_file = None
    if jsonl == "-":
        stream = sys.stdout
    elif jsonl:
        lines_file = _AtomicOutput(jsonl)
        stream = open(lines_file.temp_path, "w", encoding="utf-8")
    else:
        stream = None
    start = last_log = time.perf_counter()
    total = pipeline.source.frame_count
    if pipeline.max_frames:
        total = min(total, pipeline.max_frames) if total else pipeline.max_frames
    ended, completed = None, False
    pipeline.start()
    try:
        while True:
            try:
                result = pipeline.get(timeout=1.0)
            except KeyboardInterrupt:  # how a camera run is stopped: keep what was written
                logging.info("interrupted after %d frames", pipeline.frames_done)
                break
            if result is None:
                continue
            if isinstance(result, Ended):
                ended = result
                break
            if stream is not None:
                stream.write(json.dumps(sources.json_record(result, class_names, min_score, class_ids)) + "\n")
                stream.flush()
            if writer is not None:
                writer.write(sources.annotate(result.frame, result.detections, class_names, min_score,
                                            class_ids))
            now = time.perf_counter()
            if now - last_log > progress_s:
                last_log = now
                rate = pipeline.frames_done / (now - start)
                eta = f", ETA {(total - pipeline.frames_done) / rate:.0f} s" if total and rate else ""
                logging.info("%d%s frames, %.1f frames/s, model latency %.1f ms, %d dropped%s",
                             pipeline.frames_done, f"/{total}" if total else "", rate,
                             1000 * pipeline.latency_s(), pipeline.frames_dropped, eta)
        completed = True
    finally:
        pipeline.stop()
        if lines_file is not None:
            stream.close()
            (lines_file.commit if completed else lines_file.discard)()
        if writer is not None:
            writer.close(keep=completed)
    wall_s = time.perf_counter() - start
    # frames_per_s: the whole pipeline; model_frames_per_s: the frames over the time spent in the model.
    return {
        "source": pipeline.source.name, "model": pipeline.detector.path,
        "frames": pipeline.frames_done, "frames_read": pipeline.frames_read,
        "frames_dropped": pipeline.frames_dropped, "frames_resized": pipeline.frames_resized,
        "wall_s": wall_s, "frames_per_s": pipeline.frames_done / wall_s if wall_s else 0.0,
        "model_frames_per_s": pipeline.frames_done / pipeline.model_seconds if pipeline.model_seconds else 0.0,
        "median_latency_s": pipeline.latency_s(), "output_frames": writer.frames if writer else 0,
        "error": ended.error if ended else None,
    }
