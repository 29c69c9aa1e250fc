"""One bad file never crashes the conversion and never becomes a silently wrong record."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset import convert
from test_convert import jpeg_bytes, make_voc, read_all, run, voc_xml

BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
                  b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><annotation>&b;</annotation>')
XXE = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b"<annotation><filename>&x;</filename></annotation>")


def _exif_rotated_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 40x20, shown rotated 90 degrees counter-clockwise: 20 wide, 40 high
    return jpeg_bytes(40, 20, 7, exif=exif.tobytes())


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


def _huge_png_header():
    """A PNG claiming 9000 x 9000 (81 Mpx) with almost no data: refused from its header."""
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 9)) + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    good = jpeg_bytes(40, 30, 0)
    box = [("dog", 5, 5, 20, 20)]
    files = {
        "ok": (good, voc_xml(40, 30, box)),
        "corrupt": (b"\xff\xd8\xff\xe0 definitely not a jpeg", voc_xml(40, 30, box)),
        "truncated": (good[:len(good) // 2], voc_xml(40, 30, box)),
        "png_inside": (jpeg_bytes(40, 30, 1, fmt="PNG"), voc_xml(40, 30, box)),
        "png_file": (jpeg_bytes(40, 30, 1, fmt="PNG"), voc_xml(40, 30, box), ".png"),
        "gray": (jpeg_bytes(40, 30, 2, mode="L"), voc_xml(40, 30, box)),
        "cmyk": (jpeg_bytes(40, 30, 3, mode="CMYK"), voc_xml(40, 30, box)),
        "rgba": (jpeg_bytes(40, 30, 4, mode="RGBA", fmt="PNG"), voc_xml(40, 30, box)),
        "rotated": (_exif_rotated_jpeg(), voc_xml(20, 40, [("dog", 1, 1, 20, 10)])),
        # XML says 80x60 but the image is 40x30: one box fits the real image, one lies outside it.
        "size_mismatch": (good, voc_xml(80, 60, [("dog", 5, 5, 20, 20), ("cat", 50, 40, 80, 60)])),
        "partly_outside": (good, voc_xml(40, 30, [("dog", -3, 10, 60, 45)])),
        "inverted": (good, voc_xml(40, 30, [("dog", 20, 5, 10, 20), ("cat", 5, 5, 20, 20)])),
        "one_pixel_wide": (good, voc_xml(40, 30, [("dog", 10, 5, 10, 20)])),
        "no_image": (None, voc_xml(40, 30, box)),
        "no_xml": (good, None),
        "malformed": (good, b"<annotation><object>"),
        "laughs": (good, BILLION_LAUGHS),
        "xxe": (good, XXE),
        "escape": (good, voc_xml(40, 30, box, filename="../../outside/secret.jpg")),
        "huge": (_huge_png_header(), voc_xml(40, 30, box)),
    }
    make_voc(root, "VOC", files, {"trainval": list(files), "test": ["ok"]})
    (root / "outside").mkdir()
    (root / "outside" / "secret.jpg").write_bytes(jpeg_bytes(99, 99, 9))
    results, classes = run(root, root / "out", "VOC", "VOC:test", train_shards=3)
    voc_dir = os.path.join(str(root), "VOC")
    return {
        "skipped": {os.path.relpath(p, voc_dir): r for p, r in results["train"].skipped},
        "repaired": [(os.path.relpath(p, voc_dir), r) for p, r in results["train"].repaired],
        "records": {e["image_id"].decode(): e for e in read_all(root / "out", "train")},
        "results": results, "root": root,
    }


def test_every_bad_file_is_skipped_with_its_reason(converted):
    reasons = converted["skipped"]
    assert sorted(reasons) == ["corrupt", "huge", "laughs", "malformed", "no_image", "no_xml",
                               "truncated", "xxe"]
    assert "corrupt or unreadable image" in reasons["corrupt"]
    assert "corrupt or unreadable image" in reasons["truncated"]
    assert "exceeds the 50000000-pixel limit" in reasons["huge"]
    assert "DTD or entities" in reasons["laughs"] and "DTD or entities" in reasons["xxe"]
    assert "malformed annotation XML" in reasons["malformed"]
    assert reasons["no_image"].startswith("missing image file")
    assert reasons["no_xml"].startswith("missing annotation file")
    assert not set(reasons) & set(converted["records"])  # skipped files have no record


def test_repairs_are_counted_and_kept(converted):
    repaired = dict(converted["repaired"])  # one note each for these files
    assert repaired["png_inside"] == "PNG image re-encoded as JPEG"
    assert repaired["png_file"] == "PNG image re-encoded as JPEG"
    assert repaired["gray"] == "L image converted to RGB"
    assert repaired["cmyk"] == "CMYK image converted to RGB"
    assert repaired["rotated"] == "EXIF orientation 8 applied"
    notes = [n for f, n in converted["repaired"] if f == "rgba"]
    assert notes == ["PNG image re-encoded as JPEG", "RGBA image converted to RGB"]
    for image_id in ("png_inside", "png_file", "gray", "cmyk", "rgba", "rotated"):
        record = converted["records"][image_id]
        assert record["image"].shape == (record["height"], record["width"], 3)
    assert converted["records"]["png_file"]["filename"] == b"png_file.png"


def test_exif_rotation_gives_upright_size_matching_the_xml(converted):
    record = converted["records"]["rotated"]
    assert (record["width"], record["height"]) == (20, 40)
    np.testing.assert_allclose(record["boxes"], [[0, 0, 10 / 40, 1]], rtol=1e-6)
    assert not [n for f, n in converted["repaired"] if f == "rotated" and "XML size" in n]


def test_size_mismatch_real_size_wins_and_outside_boxes_are_dropped(converted):
    notes = [n for f, n in converted["repaired"] if f == "size_mismatch"]
    assert notes[0] == "XML size 80x60 differs from image 40x30; real size used"
    assert notes[1].startswith("dropped box (50.0, 40.0, 80.0, 60.0) of cat outside the 40x30")
    record = converted["records"]["size_mismatch"]
    # dog (5, 5, 20, 20) normalized by the real 40x30: [4/30, 4/40, 20/30, 20/40]
    np.testing.assert_allclose(record["boxes"], [[4 / 30, 0.1, 20 / 30, 0.5]], rtol=1e-6)


def test_partly_outside_box_is_clipped(converted):
    notes = [n for f, n in converted["repaired"] if f == "partly_outside"]
    assert notes == ["clipped box (-3.0, 10.0, 60.0, 45.0) of dog to the 40x30 image"]
    np.testing.assert_allclose(converted["records"]["partly_outside"]["boxes"],
                               [[9 / 30, 0, 1, 1]], rtol=1e-6)


def test_inverted_boxes_are_dropped_and_one_pixel_boxes_kept(converted):
    assert converted["records"]["inverted"]["labels"].tolist() == [1]  # only the cat remains
    assert [n for f, n in converted["repaired"] if f == "inverted"] == [
        "dropped inverted box (20.0, 5.0, 10.0, 20.0) of dog"]
    # xmin = xmax = 10 is pixel column 10 (1-based, inclusive): x in [9, 10] of 40, i.e. 1/40 wide.
    record = converted["records"]["one_pixel_wide"]
    assert record["labels"].tolist() == [2]  # dog (classes sorted: cat 1, dog 2)
    np.testing.assert_allclose(record["boxes"], [[4 / 30, 9 / 40, 20 / 30, 10 / 40]], rtol=1e-6)
    assert not [n for f, n in converted["repaired"] if f == "one_pixel_wide"]


def test_xml_filename_is_never_opened(converted):
    record = converted["records"]["escape"]
    assert (record["width"], record["filename"]) == (40, b"escape.jpg")  # not the 99x99 secret


def test_good_image_is_stored_unchanged(converted):
    record = converted["records"]["ok"]
    expected = np.asarray(Image.open(io.BytesIO(jpeg_bytes(40, 30, 0))))
    np.testing.assert_array_equal(record["image"], expected)
    assert not [n for f, n in converted["repaired"] if f == "ok"]


def test_summary_names_every_skipped_and_repaired_file(converted):
    text = convert.format_summary(converted["results"], ("cat", "dog"))
    for name in list(converted["skipped"]) + [f for f, _ in converted["repaired"]]:
        assert os.path.join("VOC", name) + ":" in text
    assert "skipped: 8 files" in text
