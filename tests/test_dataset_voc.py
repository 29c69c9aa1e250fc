import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset import voc

XML = b"""<annotation><filename>../../etc/passwd</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
<object><name>dog</name><pose>Left</pose><truncated>1</truncated><difficult>0</difficult>
<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20.5</xmax><ymax>30</ymax></bndbox></object>
<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>
<difficult>1</difficult></object></annotation>"""


def _encode(image, fmt="JPEG", **kwargs):
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _gradient_rgb(width=40, height=30):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6, y * 8, (x + y) * 3], axis=-1).astype(np.uint8)


def _decode(jpeg):
    return np.asarray(Image.open(io.BytesIO(jpeg)))


def test_parse_annotation_fields():
    ann = voc.parse_annotation(XML)
    assert (ann.width, ann.height) == (40, 30)
    dog, cat = ann.objects
    assert (dog.name, dog.pose, dog.truncated, dog.difficult, dog.box) == (
        "dog", "Left", True, False, (2.0, 3.0, 20.5, 30.0))
    assert (cat.pose, cat.truncated, cat.difficult) == ("Unspecified", False, True)


def test_billion_laughs_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<annotation><filename>&lol2;</filename></annotation>")
    with pytest.raises(voc.BadInput, match="DTD or entities"):
        voc.parse_annotation(bomb)


def test_external_entity_is_refused():
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE annotation [\n <!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
           b"<annotation><filename>&xxe;</filename></annotation>")
    with pytest.raises(voc.BadInput, match="DTD or entities"):
        voc.parse_annotation(xxe)
    # Lower-case `<!doctype` is no DTD to XML at all: expat refuses it as a syntax error.
    with pytest.raises(voc.BadInput, match="malformed annotation XML"):
        voc.parse_annotation(xxe.replace(b"DOCTYPE", b"doctype").replace(b"ENTITY", b"entity"))


@pytest.mark.parametrize("xml, message", [
    (b"<annotation><object><name>x</name>", "malformed annotation XML"),
    (b"<root/>", "root is <root>"),
    (b"<annotation><object><name>x</name></object></annotation>", "without <bndbox>"),
    (b"<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
     b"</bndbox></object></annotation>", "missing <name>"),
    (b"<annotation><object><name>x</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax>"
     b"<ymax>2</ymax></bndbox></object></annotation>", "not a number"),
    (b"<annotation><object><name>x</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>2</xmax>"
     b"<ymax>2</ymax></bndbox></object></annotation>", "'nan', not a finite number"),
    (b"<annotation><object><name>x</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax>"
     b"<ymax>2</ymax></bndbox></object></annotation>", "'inf', not a finite number"),
])
def test_malformed_xml_names_the_problem(xml, message):
    with pytest.raises(voc.BadInput, match=message):
        voc.parse_annotation(xml)


def test_image_set_takes_first_token(tmp_path):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000005  1\n000007 -1\n\n")
    assert voc.read_image_set(str(tmp_path), "dog_trainval") == ["000005", "000007"]


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "a\\b", "/etc/passwd", "..", ".", "a\0b", ""])
def test_unsafe_ids_are_refused(bad_id):
    with pytest.raises(voc.BadInput, match="unsafe image id"):
        voc.check_image_id(bad_id)


@pytest.mark.parametrize("good_id", [".hidden", "2008_000001", "a b", "x..y", "ñandú", "-dash"])
def test_plain_file_stems_are_allowed(good_id):
    voc.check_image_id(good_id)  # README: only separators, '..', absolute paths and NUL are refused


def test_plain_rgb_jpeg_is_kept_byte_for_byte():
    data = _encode(Image.fromarray(_gradient_rgb()), quality=90)
    loaded = voc.load_image(data)
    assert (loaded.jpeg, loaded.width, loaded.height, loaded.repairs) == (data, 40, 30, ())


def test_png_is_reencoded_as_jpeg_with_same_pixels():
    rgb = _gradient_rgb()
    loaded = voc.load_image(_encode(Image.fromarray(rgb), "PNG"))
    assert loaded.repairs == ("PNG image re-encoded as JPEG",)
    assert loaded.jpeg[:2] == b"\xff\xd8"
    # Quality-95 JPEG of a smooth gradient: every channel within a few levels.
    assert np.abs(_decode(loaded.jpeg).astype(int) - rgb).max() <= 6


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_non_rgb_modes_become_rgb(mode):
    image = Image.fromarray(_gradient_rgb()).convert(mode)
    loaded = voc.load_image(_encode(image, "PNG" if mode == "RGBA" else "JPEG"))
    assert ("%s image converted to RGB" % mode) in loaded.repairs
    assert _decode(loaded.jpeg).shape == (30, 40, 3)


def test_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    loaded = voc.load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert _decode(loaded.jpeg).min() >= 250


def test_exif_rotation_is_applied():
    # A 40x30 image stored with orientation 6 ("rotate 90 clockwise to view") is 30 wide, 40 high.
    image = Image.fromarray(_gradient_rgb())
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = voc.load_image(_encode(image, quality=95, exif=exif.tobytes()))
    assert (loaded.width, loaded.height) == (30, 40)
    assert loaded.repairs == ("EXIF orientation 6 applied",)
    upright = np.asarray(image.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(_decode(loaded.jpeg).astype(int) - upright).mean() < 3
    assert Image.open(io.BytesIO(loaded.jpeg)).getexif().get(0x0112) is None  # not applied twice


def test_truncated_jpeg_is_refused():
    data = _encode(Image.fromarray(_gradient_rgb()))
    with pytest.raises(voc.BadInput, match="corrupt or unreadable"):
        voc.load_image(data[:len(data) // 2])


def test_garbage_is_refused():
    with pytest.raises(voc.BadInput, match="corrupt or unreadable"):
        voc.load_image(b"this is not an image at all")


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize("side, message", [
    (8000, "exceeds the 50000000-pixel limit"),       # 64 Mpx: our limit
    (20000, "refused as a decompression bomb"),       # 400 Mpx: Pillow's own guard in open()
])
def test_pixel_limit_is_checked_before_decoding(side, message):
    # A PNG header claiming side x side pixels with almost no pixel data: a decode would report
    # truncation, so the expected message proves the refusal came from the header alone.
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    header_only = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(
        b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    with pytest.raises(voc.BadInput, match=message):
        voc.load_image(header_only)


def test_pixel_limit_is_a_parameter():
    data = _encode(Image.fromarray(_gradient_rgb()))
    with pytest.raises(voc.BadInput, match="exceeds the 1199-pixel limit"):
        voc.load_image(data, max_pixels=1199)
    assert voc.load_image(data, max_pixels=1200).width == 40
