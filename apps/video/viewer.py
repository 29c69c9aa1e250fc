"""The Qt window of stream_ssd.py: the live feed with detections drawn, frames/s and model latency, a
score-threshold slider, a class filter, pause and snapshot.

PySide6 (Qt for Python, by the Qt Company), not PyQt6: it is LGPL-3.0, so using it imposes nothing on
this project's licence, where PyQt6 is GPL-3.0 or a commercial licence; its wheels on PyPI are abi3
(one wheel for CPython 3.9 and later, 3.11 and 3.12 included) for Linux, macOS and Windows; and they
ship the "offscreen" platform plugin, which renders without a display (tests, servers). Only the
PySide6-Essentials wheel is needed (QtCore, QtGui, QtWidgets), a third of the full PySide6.

The window polls the pipeline (apps/video/streaming.py) from a Qt timer on the GUI thread, so no Qt
object is touched from the capture or inference threads. It keeps the last frame and its detections:
moving the slider or the class filter redraws that frame at once, paused or not.
"""

import os
import signal
import time

import numpy as np
from absl import logging
from PIL import Image
from PySide6 import QtCore, QtGui, QtWidgets

from apps.video import sources, streaming

SLIDER_STEPS = 100          # the slider moves the threshold in steps of 0.01
POLL_MS = 5


def to_qimage(frame):
    """uint8 [H, W, 3] RGB -> a QImage owning a copy of the pixels."""
    frame = np.ascontiguousarray(frame)
    height, width = frame.shape[:2]
    return QtGui.QImage(frame.data, width, height, 3 * width, QtGui.QImage.Format.Format_RGB888).copy()


def to_array(image):
    """QImage or QPixmap -> uint8 [H, W, 3] RGB numpy array."""
    if isinstance(image, QtGui.QPixmap):
        image = image.toImage()
    image = image.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    width, height = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8, count=image.bytesPerLine() * height)
    return rows.reshape(height, image.bytesPerLine())[:, :3 * width].reshape(height, width, 3).copy()


class VideoView(QtWidgets.QWidget):
    """Shows one image scaled to fit, aspect kept, centred on black."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._image = None
        self.setMinimumSize(320, 240)

    def set_image(self, frame):
        self._image = to_qimage(frame)
        self.update()

    def image_rect(self):
        """The QRect of the widget the image is drawn into."""
        if self._image is None:
            return QtCore.QRect()
        size = self._image.size().scaled(self.size(), QtCore.Qt.AspectRatioMode.KeepAspectRatio)
        return QtCore.QRect(QtCore.QPoint((self.width() - size.width()) // 2,
                                          (self.height() - size.height()) // 2), size)

    def paintEvent(self, event):  # noqa: N802  (Qt's name)
        painter = QtGui.QPainter(self)
        painter.fillRect(self.rect(), QtCore.Qt.GlobalColor.black)
        if self._image is not None:
            painter.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(self.image_rect(), self._image)
        painter.end()


class StreamWindow(QtWidgets.QMainWindow):
    """The window over a (not yet started) `pipeline`; class_ids: the classes shown first (None: all)."""

    def __init__(self, pipeline, class_names, min_score=0.3, class_ids=None, snapshot_dir="snapshots",
                 close_at_end=False):
        super().__init__()
        self.pipeline, self.class_names, self.snapshot_dir = pipeline, tuple(class_names), snapshot_dir
        self.min_score = float(min_score)
        self.last_result = None       # the newest FrameResult
        self.annotated = None         # what the view shows: last_result's frame with detections drawn
        self.error = None             # the source's failure message (run returns it)
        self.ended = False
        self.close_at_end = close_at_end
        self.setWindowTitle(f"SSD: {pipeline.source.name}")

        self.view = VideoView()
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setValue(round(self.min_score * SLIDER_STEPS))
        self.slider.valueChanged.connect(self._slider_moved)
        self.score_label = QtWidgets.QLabel()
        self.classes = QtWidgets.QListWidget()
        for class_id, name in enumerate(self.class_names, start=1):
            item = QtWidgets.QListWidgetItem(name)
            item.setData(QtCore.Qt.ItemDataRole.UserRole, class_id)
            shown = class_ids is None or class_id in class_ids
            item.setCheckState(QtCore.Qt.CheckState.Checked if shown else QtCore.Qt.CheckState.Unchecked)
            self.classes.addItem(item)
        self.classes.itemChanged.connect(lambda _: self.redraw())
        self.pause_button = QtWidgets.QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self._pause_toggled)
        self.snapshot_button = QtWidgets.QPushButton("Snapshot")
        self.snapshot_button.clicked.connect(self.snapshot)
        self.pause_button.setShortcut(QtGui.QKeySequence(QtCore.Qt.Key.Key_Space))
        self.snapshot_button.setShortcut(QtGui.QKeySequence("S"))
        self.stats_label = QtWidgets.QLabel("starting…")

        self.stats_label.setMinimumHeight(3 * self.stats_label.fontMetrics().lineSpacing() + 4)
        side = QtWidgets.QVBoxLayout()
        side.addWidget(self.stats_label)
        side.addWidget(QtWidgets.QLabel("Score threshold"))
        side.addWidget(self.slider)
        side.addWidget(self.score_label)
        side.addWidget(QtWidgets.QLabel("Classes shown"))
        side.addWidget(self.classes, stretch=1)
        side.addWidget(self.pause_button)
        side.addWidget(self.snapshot_button)
        panel = QtWidgets.QWidget()
        panel.setLayout(side)
        panel.setFixedWidth(200)
        layout = QtWidgets.QHBoxLayout()
        layout.addWidget(self.view, stretch=1)
        layout.addWidget(panel)
        central = QtWidgets.QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self._slider_moved(self.slider.value())

        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self.poll)

    def start(self):
        self.pipeline.start()
        self._timer.start(POLL_MS)

    def class_ids(self):
        """The ids of the checked classes."""
        return {self.classes.item(row).data(QtCore.Qt.ItemDataRole.UserRole)
                for row in range(self.classes.count())
                if self.classes.item(row).checkState() == QtCore.Qt.CheckState.Checked}

    def poll(self):
        """Takes every result waiting, shows the newest; notes the end of the stream. Paused, the view
        stays on its frame (the pipeline holds what came after)."""
        newest = None
        if self.pipeline.paused:
            return
        while True:
            result = self.pipeline.get(timeout=0)
            if result is None:
                break
            if isinstance(result, streaming.Ended):
                self._ended(result.error)
                break
            newest = result
        if newest is not None:
            self.last_result = newest
            self.redraw()
        self._update_stats()

    def _ended(self, error):
        self.ended = True
        self._timer.stop()
        self.error = error
        message = f"source failed: {error}" if error else "end of the video"
        self.statusBar().showMessage(message)
        if self.close_at_end:
            self.close()

    def redraw(self):
        if self.last_result is None:
            return
        self.annotated = sources.annotate(self.last_result.frame, self.last_result.detections,
                                        self.class_names, self.min_score, self.class_ids())
        self.view.set_image(self.annotated)

    def _update_stats(self):
        pipeline = self.pipeline
        self.stats_label.setText(f"{pipeline.fps.rate():.1f} frames/s\n"
                                 f"model {1000 * pipeline.latency_s():.0f} ms\n"
                                 f"{pipeline.frames_done} shown, {pipeline.frames_dropped} dropped")
        if pipeline.source.status and not self.ended:
            self.statusBar().showMessage(pipeline.source.status)

    def _slider_moved(self, value):
        self.min_score = value / SLIDER_STEPS
        self.score_label.setText(f"≥ {self.min_score:.2f}")
        self.redraw()

    def _pause_toggled(self, paused):
        self.pipeline.paused = paused
        self.pause_button.setText("Resume" if paused else "Pause")

    def snapshot(self):
        """Saves the annotated frame shown as a PNG in snapshot_dir (atomically); returns its path."""
        if self.annotated is None:
            self.statusBar().showMessage("no frame to save yet")
            return None
        os.makedirs(self.snapshot_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(self.snapshot_dir, f"snapshot-{stamp}-frame{self.last_result.index:06d}.png")
        temp = path + ".partial"
        Image.fromarray(self.annotated).save(temp, format="PNG")
        os.replace(temp, path)
        self.statusBar().showMessage(f"saved {path}")
        return path

    def closeEvent(self, event):  # noqa: N802  (Qt's name)
        self._timer.stop()
        self.pipeline.stop()
        super().closeEvent(event)


def application():
    """The process's QApplication, made once."""
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication(["stream_ssd"])


def run(pipeline, class_names, min_score, class_ids, snapshot_dir, close_at_end=False, size=(1100, 640)):
    """Shows the window until it is closed; returns why the source failed (its message), or None."""
    app = application()
    window = StreamWindow(pipeline, class_names, min_score, class_ids, snapshot_dir, close_at_end)
    window.resize(*size)
    window.show()
    window.start()
    # Ctrl-C in the terminal closes the window as its close button does (the poll timer lets Python
    # run the handler while Qt's loop runs).
    signal.signal(signal.SIGINT, lambda *_: window.close())
    app.exec()
    logging.info("%d frames shown, %d dropped; %s", pipeline.frames_done, pipeline.frames_dropped,
                 f"source failed: {window.error}" if window.error else "closed")
    return window.error
