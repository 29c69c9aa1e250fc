"""apps/video/sources.py, apps/video/streaming.py and stream_ssd.py headless: sources, the model through the
detector door, the threaded pipeline (order, dropping, reconnects, size changes), the outputs and the
script's bad input."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

from apps.video import sources, streaming
from conftest import REPO_ROOT
from dataset import fields
from engine import serving, tflite_export
from model import anchors as anchors_lib
from model import presets
from nets import ssd

SAMPLE_IMAGES = os.path.join(REPO_ROOT, "dataset", "sample", "JPEGImages")
CLASS_NAMES = ("circle", "square", "star")
VIDEO_SIZE = (160, 120)          # width, height
VIDEO_FRAMES = 12
# Two fixed detections of the fake model (normalized [ymin, xmin, ymax, xmax]).
BOX_A, BOX_B = [0.2, 0.1, 0.8, 0.45], [0.2, 0.55, 0.8, 0.9]


def make_video(path, num_frames=VIDEO_FRAMES, size=VIDEO_SIZE, fps=10.0):
    """A video of the first `num_frames` sample images resized to `size`; returns them decoded back
    (uint8 [N, H, W, 3] RGB), i.e. what a reader of the file gets."""
    codec = sources.FOURCC_BY_EXTENSION[os.path.splitext(path)[1]]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    for i in range(1, num_frames + 1):
        writer.write(cv2.resize(cv2.imread(os.path.join(SAMPLE_IMAGES, f"{i:06d}.jpg")), size))
    writer.release()
    return read_video(path)


def read_video(path):
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames) if frames else np.zeros([0])


def fake_batch_fn(images):
    """Boxes A (class 1, score 0.9) and B (class 2, score 0.5) in every frame, plus a third row whose
    score is 0.4 x the frame's mean pixel / 255 (class 3), so a result tells which frame it came from."""
    batch = len(images)
    mean = 0.4 * images.reshape(batch, -1).mean(axis=1) / 255.0
    return {fields.DETECTION_BOXES: np.tile(np.array([[BOX_A, BOX_B, [0, 0, 1, 1], [0, 0, 0, 0]]],
                                                     np.float32), (batch, 1, 1)),
            fields.DETECTION_SCORES: np.stack([np.full(batch, 0.9), np.full(batch, 0.5), mean,
                                               np.zeros(batch)], axis=1).astype(np.float32),
            fields.DETECTION_CLASSES: np.tile(np.array([[1, 2, 3, 0]], np.float32), (batch, 1)),
            fields.NUM_DETECTIONS: np.full([batch], 3, np.float32)}


def fake_detector(delay_s=0.0):
    """A serving.Detector around fake_batch_fn (padded outputs in, trimmed Detections out, as every kind)."""
    import time

    def batch_fn(images):
        time.sleep(delay_s)
        return fake_batch_fn(images)
    return serving.Detector("fake", "fake", None, CLASS_NAMES, batch_fn)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    return str(path), make_video(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random SSD300 (width 0.125) exported as a SavedModel."""
    config = presets.get("ssd300_vgg16", len(CLASS_NAMES), width_multiplier=0.125)
    keras.utils.set_random_seed(0)
    module = serving.DetectionModule(ssd.build(config), anchors_lib.generate(config), config)
    return serving.export(module, CLASS_NAMES, str(tmp_path_factory.mktemp("export") / "ssd"))


def _run_script(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "stream_ssd.py"), *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_headless_script_gives_one_line_per_frame_and_a_playable_video(clip, exported, tmp_path):
    path, frames = clip
    jsonl, output = tmp_path / "out" / "detections.jsonl", tmp_path / "out" / "annotated.mp4"
    result = _run_script("--model", exported, "--source", path, "--no_display", "--score_threshold", "0",
                         "--jsonl", str(jsonl), "--output", str(output), "--batch_size", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["frames"], summary["frames_dropped"], summary["error"]) == (VIDEO_FRAMES, 0, None)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(VIDEO_FRAMES))
    assert {(line["width"], line["height"]) for line in lines} == {VIDEO_SIZE}
    # Positions come from the file: frame i at i / 10 s.
    np.testing.assert_allclose([line["position_s"] for line in lines], np.arange(VIDEO_FRAMES) / 10.0,
                               atol=1e-6)
    written = read_video(output)
    assert written.shape == (VIDEO_FRAMES, VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    assert sorted(os.listdir(output.parent)) == ["annotated.mp4", "detections.jsonl"]  # no partial files

    # Every line holds the model's detections of that very frame (the order survived the threads), all
    # of them at --score_threshold 0: as many as the SavedModel's padded num_detections.
    loaded, _, _ = serving.load(exported)
    signature = loaded.signatures[serving.SERVING_DEFAULT]
    for index in (0, 5, VIDEO_FRAMES - 1):
        padded = {k: v.numpy()[0] for k, v in signature(**{serving.IMAGES_INPUT: frames[index][None]}).items()}
        n = int(padded[fields.NUM_DETECTIONS])
        listed = lines[index]["detections"]
        assert len(listed) == n > 0
        np.testing.assert_allclose([d["score"] for d in listed], padded[fields.DETECTION_SCORES][:n], atol=1e-6)
        np.testing.assert_allclose([d["box"] for d in listed], padded[fields.DETECTION_BOXES][:n], atol=1e-6)
        assert [d["class_id"] for d in listed] == padded[fields.DETECTION_CLASSES][:n].astype(int).tolist()


def test_json_record_and_drawing_follow_threshold_and_class_filter(clip):
    _, frames = clip
    detections = fake_detector()(frames[0])
    result = streaming.FrameResult(0, frames[0], detections, 0.01, None)
    record = sources.json_record(result, CLASS_NAMES, min_score=0.45)
    assert [d["class_name"] for d in record["detections"]] == ["circle", "square"]   # 0.9, 0.5
    # VOC 1-based pixels of box A on 160 x 120: xmin 0.1 * 160 + 1 = 17, ymax 0.8 * 120 = 96.
    np.testing.assert_allclose(record["detections"][0]["box_pixels"], [17, 25, 72, 96], atol=1e-4)
    assert [d["class_id"] for d in sources.json_record(result, CLASS_NAMES, 0.45, {2})["detections"]] == [2]
    assert sources.json_record(result, CLASS_NAMES, 0.95)["detections"] == []
    # Nothing selected: the drawing is the frame; something selected: pixels change.
    np.testing.assert_array_equal(sources.annotate(frames[0], detections, CLASS_NAMES, 0.95), frames[0])
    assert (sources.annotate(frames[0], detections, CLASS_NAMES, 0.45) != frames[0]).any()


def test_file_is_processed_in_order_and_a_live_source_drops_stale_frames(clip):
    path, frames = clip
    pipeline = streaming.Pipeline(sources.open_source(path), fake_detector(delay_s=0.02), batch_size=2)
    summary = streaming.run_headless(pipeline, CLASS_NAMES)
    assert (summary["frames"], summary["frames_dropped"]) == (VIDEO_FRAMES, 0)

    class LiveSource:
        """A camera delivering 60 frames far faster than the model (20 ms a call) takes them."""
        name, live, fps, frame_count, status = "fake camera", True, None, None, ""

        def __init__(self):
            self.count = 0

        def read(self):
            if self.count == 60:
                return None
            self.count += 1
            return frames[self.count % VIDEO_FRAMES], None

        def close(self):
            pass

    pipeline = streaming.Pipeline(LiveSource(), fake_detector(delay_s=0.02)).start()
    indices = []
    while True:
        result = pipeline.get(timeout=10)
        if isinstance(result, streaming.Ended):
            break
        indices.append(result.index)
        # Each result is of the frame it claims to be (third row: 0.4 x its mean pixel / 255).
        np.testing.assert_allclose(result.detections.scores[2],
                                   0.4 * frames[(result.index + 1) % VIDEO_FRAMES].mean() / 255, atol=1e-5)
    pipeline.stop()
    assert pipeline.frames_read == 60 and pipeline.frames_dropped > 0
    assert len(indices) + pipeline.frames_dropped == 60
    assert indices == sorted(indices) and indices[-1] == 59   # the newest frame always gets through


def test_a_fixed_input_model_gets_frames_resized_in_the_capture_thread(clip):
    """A model of fixed input S (a TFLite file: runtime.input_size) is fed the door's own resize of each
    frame, done by the capture thread; the results carry the frames as read."""
    path, frames = clip
    seen = []

    def batch_fn(images):
        seen.append(images)
        return fake_batch_fn(images)

    class FixedInput:
        input_size = 48

    detector = serving.Detector("fake", "fake", None, CLASS_NAMES, batch_fn, FixedInput())
    pipeline = streaming.Pipeline(sources.open_source(path), detector, batch_size=2).start()
    results = []
    while not isinstance(result := pipeline.get(timeout=10), streaming.Ended):
        results.append(result)
    pipeline.stop()
    assert pipeline.model_size == 48 and [r.index for r in results] == list(range(VIDEO_FRAMES))
    fed = np.concatenate(seen)
    assert fed.shape == (VIDEO_FRAMES, 48, 48, 3) and fed.dtype == np.uint8
    for i in (0, VIDEO_FRAMES - 1):
        np.testing.assert_array_equal(fed[i], tflite_export.resize_uint8(frames[i], 48))
        np.testing.assert_array_equal(results[i].frame, frames[i])
    # Any other model (the graph resizes) gets the frames as they are.
    assert streaming.Pipeline(sources.open_source(path), fake_detector()).model_size is None


class FakeCapture:
    def __init__(self, frames, opened=True):
        self.frames, self.opened = list(frames), opened

    def isOpened(self):  # noqa: N802  (OpenCV's name)
        return self.opened

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_a_stream_that_drops_is_reopened_with_back_off_then_given_up():
    frame = np.zeros([8, 8, 3], np.uint8)
    captures = iter([FakeCapture([frame] * 3), FakeCapture([], opened=False), FakeCapture([frame] * 2)]
                    + [FakeCapture([], opened=False)] * 3)
    waits = []
    source = sources.CaptureSource("rtsp://cam/stream", "url", max_reconnects=3, backoff_s=0.5,
                                 max_backoff_s=1.5,
                                 open_capture=lambda spec: next(captures), sleep=waits.append)
    pipeline = streaming.Pipeline(source, fake_detector()).start()
    results = []
    while not isinstance(result := pipeline.get(timeout=10), streaming.Ended):
        results.append(result)
    pipeline.stop()
    # A live source: frames waiting while the model ran were dropped, the newest always reaches it.
    assert pipeline.frames_read == 5 and len(results) + pipeline.frames_dropped == 5
    assert results[-1].index == 4
    # 0.5 (refused) then 1.0 (back); after two frames 0.5, 1.0, 1.5 (capped), all refused.
    assert waits == [0.5, 1.0, 0.5, 1.0, 1.5]
    assert result.error == ("rtsp://cam/stream stopped delivering frames after 5 frames and 3 "
                            "reconnects failed")


def test_rate_meter_counts_the_last_window():
    now = [10.0]
    meter = streaming.RateMeter(window_s=2.0, clock=lambda: now[0])
    meter.start()
    for _ in range(5):            # 5 events in the first second: 5 / 1 s
        now[0] += 0.2
        meter.tick()
    assert meter.rate() == pytest.approx(5.0)
    now[0] += 2.0                 # 3 s in, nothing for 2 s: the window (2 s) holds the last event
    assert meter.rate() == pytest.approx(0.5)
    now[0] += 0.5
    assert meter.rate() == 0.0


def test_bad_sources_give_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 400)
    cases = {str(tmp_path / "missing.mp4"): "missing.mp4: no such video file",
             str(tmp_path / "corrupt.mp4"): "OpenCV cannot open it as a video",
             str(tmp_path / "empty"): "no .jpg/.jpeg/.png/.bmp images in this folder",
             "http://127.0.0.1:9/none.mjpg": "did not open after 0 frames and 1 reconnects failed",
             "9": "camera 9 did not open"}    # no retries for a camera that is not there
    for spec, message in cases.items():
        with pytest.raises(sources.SourceError, match=message):
            sources.open_source(spec, max_reconnects=1, backoff_s=0.01, timeout_s=1.0)
    assert sources.source_kind("0") == "camera" and sources.source_kind("RTSP://x") == "url"


def test_a_truncated_video_gives_its_frames_and_one_warning(clip, tmp_path, caplog):
    path, frames = clip
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[:len(data) // 2])
    source = sources.open_source(str(truncated))
    read = []
    while (item := source.read()) is not None:
        read.append(item[0])
    assert 0 < len(read) < VIDEO_FRAMES
    np.testing.assert_array_equal(read[0], frames[0])
    warnings = [r.getMessage() for r in caplog.records if "header announces" in r.getMessage()]
    assert warnings == [f"{truncated} ended after {len(read)} of the {VIDEO_FRAMES} frames its header "
                        "announces (truncated or corrupt?)"]


def test_folder_with_changing_sizes_and_a_broken_image(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    names = ["000001.jpg", "000002.jpg", "000003.jpg"]
    sizes = [cv2.imread(os.path.join(SAMPLE_IMAGES, n)).shape[:2] for n in names]
    assert len(set(sizes)) > 1   # the sample images differ in size
    for name in names:
        shutil.copy(os.path.join(SAMPLE_IMAGES, name), folder / name)
    (folder / "000002b.jpg").write_bytes(b"not a jpeg")
    source = sources.open_source(str(folder))
    output = tmp_path / "folder.avi"
    summary = streaming.run_headless(streaming.Pipeline(source, fake_detector()), CLASS_NAMES,
                                          output=str(output))
    assert source.skipped == [str(folder / "000002b.jpg")]
    assert summary["frames"] == 3 and summary["error"] is None
    assert summary["frames_resized"] == sum(size != sizes[0] for size in sizes[1:])
    assert read_video(output).shape[:3] == (3, *sizes[0])   # every frame at the first frame's size


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--source", "missing.mp4"], "stream_ssd.py: error: missing.mp4: no such video file"),
    (["--source", "dataset/sample/JPEGImages", "--model", "ssd.tflite"],
     "stream_ssd.py: error: ssd.tflite: cannot load the model (ssd.tflite: no such .tflite file)"),
    (["--source", "dataset/sample/JPEGImages", "--output", "out.gif"],
     "stream_ssd.py: error: --output out.gif: the file name must end in one of .avi"),
], ids=["missing_file", "tflite", "output_format"])
def test_script_bad_input_exits_2_with_one_line(exported, args, message):
    if "--model" not in args:
        args = args + ["--model", exported]
    result = _run_script(*args, "--no_display")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.stderr
