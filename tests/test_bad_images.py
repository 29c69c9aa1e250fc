"""Bad images at inference (issue 27, item 5): engine.serving.read_image on a corpus of hostile files,
detect_ssd.detect_files over the corpus (one line each, the rest processed), the serving_encoded pixel
cap read from every format's header, and the one detector door called from several threads.

Every file is made here with Pillow or by hand (the oversized ones are headers that declare 20,000 x
20,000 pixels over a few bytes), so the expected outcome of each can be checked by reading this file.
"""

import io
import logging
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import detect_ssd
from conftest import REPO_ROOT
from dataset.voc import MAX_IMAGE_PIXELS
from engine import serving
from test_export import write_random_model_dir

SAMPLE_JPEG = os.path.join(REPO_ROOT, "dataset", "sample", "JPEGImages", "000001.jpg")


def _png_header_only(width, height):
    """A PNG signature and an IHDR chunk declaring width x height 8-bit RGB, then IEND: no pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _jpeg_declaring(width, height):
    """The sample JPEG with its SOF0 frame header rewritten to width x height (the data stays small)."""
    data = bytearray(open(SAMPLE_JPEG, "rb").read())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _gradient(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 90)],
                    -1).astype(np.uint8)


def _rotated_jpeg():
    """40 wide x 20 high, left half red, stored with EXIF orientation 6 (shown rotated 90 degrees CW)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def _animated_gif():
    frames = [Image.fromarray(np.full((16, 24, 3), value, np.uint8)) for value in (30, 220)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


SAMPLE = open(SAMPLE_JPEG, "rb").read()
# name -> (bytes, expected): a BadImage message part, or the (height, width) of the image read.
CORPUS = {
    "truncated.jpg": (SAMPLE[:len(SAMPLE) // 2], "corrupt or truncated JPEG data"),
    "zero_bytes.jpg": (b"", "not a JPEG, PNG, GIF or BMP image (0 bytes)"),
    "text.jpg": (b"this is a text file, not a photo\n",
                 "not a JPEG, PNG, GIF or BMP image (33 bytes, starting b'this is a te')"),
    "huge.png": (_png_header_only(20000, 20000), "400,000,000 pixels is over the 50,000,000-pixel cap"),
    "big.png": (_png_header_only(9000, 9000), "9000 x 9000 pixels is over the 50,000,000-pixel cap"),
    # Pillow refuses this one itself when it reads the header (over twice its own limit); same line.
    "huge.jpg": (_jpeg_declaring(20000, 20000), "400,000,000 pixels is over the 50,000,000-pixel cap"),
    "grey16.png": (_encoded(Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)), "PNG"),
                   (30, 40)),
    "cmyk.jpg": (_encoded(Image.fromarray(_gradient(24, 32)).convert("CMYK"), "JPEG", quality=95), (24, 32)),
    "progressive.jpg": (_encoded(Image.fromarray(_gradient(24, 32)), "JPEG", progressive=True), (24, 32)),
    "animated.gif": (_animated_gif(), (16, 24)),
    "one_pixel.png": (_encoded(Image.fromarray(np.full((1, 1, 3), 128, np.uint8)), "PNG"), (1, 1)),
    "rotated.jpg": (_rotated_jpeg(), (40, 20)),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_read_image_names_the_problem_or_reads_the_image(name):
    data, expected = CORPUS[name]
    if isinstance(expected, str):
        with pytest.raises(serving.BadImage) as info:
            serving.read_image(data)
        assert expected in str(info.value)
        assert "\n" not in str(info.value)
    else:
        image = serving.read_image(data)
        assert image.dtype == np.uint8 and image.shape == (*expected, 3)


def test_decoded_pixels_are_the_right_ones():
    _, grey16 = CORPUS["grey16.png"][0], serving.read_image(CORPUS["grey16.png"][0])
    # 16-bit grey scaled to 8 bits (TF's convert_image_dtype: value * 255 / 65535, rounded down ...).
    sixteen = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    assert np.abs(grey16[..., 0].astype(int) - sixteen.astype(int) * 255 // 65535).max() <= 1
    assert np.array_equal(grey16[..., 0], grey16[..., 2])
    # EXIF orientation 6: the stored 20 x 40 image turned 90 degrees clockwise; its red left half is on top.
    rotated = serving.read_image(CORPUS["rotated.jpg"][0]).astype(int)
    assert rotated[:18, :, 0].min() > 200 and rotated[:18, :, 1].max() < 60
    assert rotated[22:, :, 0].max() < 60
    # CMYK comes back as the RGB it was made from (JPEG loss only); the GIF as its first frame.
    assert np.abs(serving.read_image(CORPUS["cmyk.jpg"][0]).astype(int) - _gradient(24, 32)).max() < 16
    assert np.all(serving.read_image(CORPUS["animated.gif"][0]) == 30)


def test_cap_is_the_converters_and_checked_before_decoding():
    assert MAX_IMAGE_PIXELS == 50_000_000
    # 7072 x 7071 = 50,006,112 pixels is refused from its header alone; the file holds no pixel data.
    with pytest.raises(serving.BadImage, match="7072 x 7071 pixels is over"):
        serving.read_image(_png_header_only(7072, 7071))
    with pytest.raises(serving.BadImage, match="corrupt or truncated PNG"):   # under the cap: decoded
        serving.read_image(_png_header_only(7071, 7071))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("bad_images_model")
    write_random_model_dir(model_dir, seed=2)
    return serving.load_detector(str(model_dir))


def test_detect_files_skips_each_bad_file_with_one_line_and_processes_the_rest(detector, tmp_path, caplog):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, (data, _) in CORPUS.items():
        (folder / name).write_bytes(data)
    paths = detect_ssd.expand_inputs([str(folder)]) + [str(folder / "missing.jpg")]
    with caplog.at_level(logging.ERROR):
        records, skipped = detect_ssd.detect_files(paths, detector, str(tmp_path / "out"), 0.0)
    bad = sorted(n for n, (_, expected) in CORPUS.items() if isinstance(expected, str)) + ["missing.jpg"]
    assert skipped == len(bad) == 7
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == len(bad)
    for name in bad:
        line, = [e for e in errors if e.startswith(f"skipping {folder / name}: ")]
        assert "\n" not in line
    assert "No such file or directory" in [e for e in errors if "missing.jpg" in e][0]
    good = {os.path.basename(r["file"]): (r["height"], r["width"]) for r in records}
    assert good == {n: expected for n, (_, expected) in CORPUS.items() if not isinstance(expected, str)}
    assert (tmp_path / "out" / "rotated_detections.png").exists()


def test_serving_encoded_refuses_oversized_headers_of_every_format(detector):
    encoded = detector.runtime.serve_encoded
    gif = bytearray(_animated_gif())
    gif[6:10] = struct.pack("<HH", 20000, 20000)
    bmp = bytearray(_encoded(Image.fromarray(_gradient(8, 8)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 20000, -20000)   # a top-down BMP has a negative height
    for data in (_png_header_only(20000, 20000), _jpeg_declaring(20000, 20000), bytes(gif), bytes(bmp)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="over the 50000000-pixel cap"):
            encoded(tf.constant([data]))
    outputs = encoded(tf.constant([CORPUS["one_pixel.png"][0], CORPUS["progressive.jpg"][0]]))
    assert outputs["num_detections"].shape == (2,)


def test_the_door_takes_calls_from_several_threads(detector):
    images = [_gradient(60 + 7 * i, 80 - 5 * i) for i in range(4)]
    alone = [detector(image) for image in images]
    results = {}

    def work(i):
        for _ in range(3):
            results.setdefault(i, []).append(detector(images[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, found in results.items():
        for detections in found:
            np.testing.assert_array_equal(detections.boxes, alone[i].boxes)
            np.testing.assert_array_equal(detections.scores, alone[i].scores)


def test_a_runtime_that_is_not_thread_safe_runs_one_call_at_a_time(detector):
    inside, most = [0], [0]

    def run_batch(images):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        inside[0] -= 1
        return {"num_detections": np.zeros(len(images)), "detection_boxes": np.zeros((len(images), 1, 4)),
                "detection_scores": np.zeros((len(images), 1)), "detection_classes": np.zeros((len(images), 1))}

    for thread_safe, at_once in ((False, {1}), (True, {2, 3, 4})):
        inside[0] = most[0] = 0
        door = serving.Detector("tflite", "x", detector.config, detector.class_names, run_batch,
                                thread_safe=thread_safe)
        threads = [threading.Thread(target=door, args=(np.zeros((4, 4, 3), np.uint8),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert most[0] in at_once
