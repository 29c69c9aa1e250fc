"""apps/video/viewer.py: the Qt window rendered offscreen (no display, no camera) on a synthetic video of
the sample images: boxes drawn in the grabbed widget, the slider and the class filter change what is
drawn, pause holds the frame, snapshot saves it, a failing source keeps the window up; and
stream_ssd.py with a window, offscreen, on a video file.

STREAM_SSD_SCREENSHOT=docs/stream_ssd.png makes the ground-truth test save the README's screenshot.
"""

import os
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from test_video import BOX_A, BOX_B, CLASS_NAMES, SAMPLE_IMAGES, VIDEO_SIZE  # noqa: E402
from test_video import _run_script, exported, fake_detector, make_video  # noqa: E402,F401

from dataset import fields, voc, voc_boxes  # noqa: E402
from apps.video import sources, streaming, viewer  # noqa: E402
from engine import serving  # noqa: E402

# A drawn edge changes a pixel by far more than this; scaling the view blurs a raw frame by less.
EDGE_DIFFERENCE = 60
SAMPLE_CLASSES = ("circle", "cross", "ellipse", "hexagon", "ring", "square", "star", "triangle")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    return str(path), make_video(path, num_frames=6)


def _process_until(app, condition, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the window"
        app.processEvents()
        time.sleep(0.005)


def _edge_changed(window, box, side):
    """Whether the view shows a drawn line on the left (or right) edge of `box`, halfway down:
    the grabbed widget against the same view showing the raw frame (same scaling)."""
    drawn = viewer.to_array(window.view.grab())
    window.view.set_image(window.last_result.frame)
    raw = viewer.to_array(window.view.grab())
    window.view.set_image(window.annotated)
    rect = window.view.image_rect()
    ymin, xmin, ymax, xmax = box
    x = xmin if side == "left" else xmax
    column = rect.left() + round(x * (rect.width() - 1))
    rows = slice(rect.top() + round((ymin + 0.35 * (ymax - ymin)) * rect.height()),
                 rect.top() + round((ymin + 0.65 * (ymax - ymin)) * rect.height()))
    window_columns = slice(column - 1, column + 2)
    difference = np.abs(drawn[rows, window_columns].astype(int) - raw[rows, window_columns].astype(int))
    # Along most of the edge's middle, some channel changed strongly.
    return np.mean(difference.max(axis=(1, 2)) > EDGE_DIFFERENCE) > 0.8


def test_window_draws_boxes_and_its_controls_change_them(clip, tmp_path):
    path, _ = clip
    app = viewer.application()
    pipeline = streaming.Pipeline(sources.open_source(path), fake_detector())
    window = viewer.StreamWindow(pipeline, CLASS_NAMES, min_score=0.3,
                                         snapshot_dir=str(tmp_path / "snaps"))
    window.resize(900, 420)
    window.show()
    window.start()
    _process_until(app, lambda: window.last_result is not None)
    window.pause_button.click()
    assert pipeline.paused and window.pause_button.text() == "Resume"
    shown = window.last_result.index
    time.sleep(0.2)
    app.processEvents()
    assert window.last_result.index == shown                # paused: the frame holds

    # Threshold 0.3: box A (0.9) and box B (0.5) are drawn.
    assert _edge_changed(window, BOX_A, "left") and _edge_changed(window, BOX_B, "right")
    # The slider to 0.7: only A is drawn; the paused frame is redrawn at once.
    window.slider.setValue(70)
    assert window.min_score == pytest.approx(0.7) and window.score_label.text() == "≥ 0.70"
    assert _edge_changed(window, BOX_A, "left") and not _edge_changed(window, BOX_B, "right")
    # Back to 0.3, class 1 (circle, box A) unchecked: only B.
    window.slider.setValue(30)
    window.classes.item(0).setCheckState(viewer.QtCore.Qt.CheckState.Unchecked)
    assert window.class_ids() == {2, 3}
    assert not _edge_changed(window, BOX_A, "left") and _edge_changed(window, BOX_B, "right")

    snapshot = window.snapshot()
    np.testing.assert_array_equal(np.asarray(Image.open(snapshot)), window.annotated)
    assert window.annotated.shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)

    window.pause_button.click()                             # resume: the video plays to its end
    _process_until(app, lambda: window.ended)
    assert window.error is None and window.last_result.index == 5
    assert window.statusBar().currentMessage() == "end of the video"
    window.close()


def test_window_on_a_folder_of_sample_images_with_their_annotations_as_detections(tmp_path):
    """A folder source at the images' own sizes; the 'detector' returns each image's annotated boxes
    (score 1), so the drawn boxes must lie on the annotation's edges."""
    ids = ["000042"]   # six objects
    folder = tmp_path / "frames"
    folder.mkdir()
    truths = []
    for image_id in ids:
        Image.open(os.path.join(SAMPLE_IMAGES, image_id + ".jpg")).save(folder / (image_id + ".png"))
        annotation = voc.read_annotation(os.path.dirname(SAMPLE_IMAGES), image_id)
        truths.append((voc_boxes.voc_pixels_to_normalized([o.box for o in annotation.objects],
                                                          annotation.width, annotation.height),
                       [SAMPLE_CLASSES.index(o.name) + 1 for o in annotation.objects]))
    calls = []

    def annotations(images):  # frames come in reading order, one per call (batch 1)
        boxes, classes = truths[len(calls)]
        calls.append(len(calls))
        count = len(classes)
        return {fields.DETECTION_BOXES: np.asarray(boxes)[None], fields.DETECTION_SCORES: np.ones([1, count]),
                fields.DETECTION_CLASSES: np.asarray(classes, np.float32)[None],
                fields.NUM_DETECTIONS: np.asarray([count], np.float32)}

    app = viewer.application()
    detector = serving.Detector("fake", "annotations", None, SAMPLE_CLASSES, annotations)
    pipeline = streaming.Pipeline(sources.open_source(str(folder)), detector)
    window = viewer.StreamWindow(pipeline, SAMPLE_CLASSES, snapshot_dir=str(tmp_path / "snaps"))
    window.resize(760, 480)
    window.show()
    window.start()
    _process_until(app, lambda: window.last_result is not None)
    window.pause_button.click()
    boxes, _ = truths[window.last_result.index]
    for box in boxes:
        assert _edge_changed(window, box, "left") or _edge_changed(window, box, "right")
    if os.environ.get("STREAM_SSD_SCREENSHOT"):
        # 256 colours keep the README's PNG small (the textured backgrounds compress poorly).
        screenshot = Image.fromarray(viewer.to_array(window.grab())).quantize(256)
        screenshot.save(os.environ["STREAM_SSD_SCREENSHOT"])
    window.close()


def test_a_failing_source_keeps_the_window_up_with_the_message(clip):
    _, frames = clip

    class DroppingStream:
        name, live, fps, frame_count, status = "rtsp://cam", True, None, None, ""

        def __init__(self):
            self.count = 0

        def read(self):
            self.count += 1
            if self.count > 2:
                raise sources.SourceError("rtsp://cam stopped delivering frames after 2 frames and 5 "
                                        "reconnects failed")
            return frames[0], None

        def close(self):
            pass

    app = viewer.application()
    window = viewer.StreamWindow(streaming.Pipeline(DroppingStream(), fake_detector()), CLASS_NAMES)
    window.show()
    window.start()
    _process_until(app, lambda: window.ended)
    assert window.isVisible() and window.last_result is not None     # up, on its last frame
    assert window.error.startswith("rtsp://cam stopped delivering frames")
    assert window.statusBar().currentMessage() == "source failed: " + window.error
    window.close()


@pytest.mark.slow
def test_script_with_a_window_offscreen_on_a_video_file(clip, exported):  # noqa: F811
    path, _ = clip
    result = _run_script("--model", exported, "--source", path, "--close_at_end",
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "every frame" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run_script("--model", exported, "--source", path,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "stream_ssd.py: error: no display to open a window on: run with --no_display (and --output/--jsonl), "
        "or set QT_QPA_PLATFORM=offscreen")
