"""Reading one VOC-layout directory: image sets, annotation XML and images, each validated.

Layout (the VOC devkit's, unchanged for VOC2007, VOC2012 and the embedded sample):

    <voc_dir>/JPEGImages/<id>.jpg  <voc_dir>/Annotations/<id>.xml  <voc_dir>/ImageSets/Main/<set>.txt

The id from the image list alone decides which files are opened; the XML <filename> is never used as
a path. Every problem is raised as `BadInput(reason)` so the converter can skip the file and name the
reason; fixable problems are repaired and described in the returned `repairs`.
"""

import dataclasses
import io
import math
import os
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from xml.parsers import expat

from PIL import Image, ImageOps

ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "JPEGImages"
IMAGE_SETS_DIR = os.path.join("ImageSets", "Main")
DEFAULT_IMAGE_SET = "trainval"
# Looked for in this order; the file's content, not its extension, decides the repair.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG", ".bmp", ".BMP")
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MAX_IMAGE_PIXELS = 50_000_000   # decompression-bomb guard, checked from the header before decoding
REENCODE_QUALITY = 95           # repaired images are re-encoded once, close to lossless
MAX_XML_BYTES = 10_000_000
# What makes an id unsafe as a file stem: it could leave JPEGImages/ or Annotations/ (a separator, `..`,
# an absolute path) or cut the path short (NUL). Anything else is a legal file name and is allowed.
_ID_SEPARATORS = tuple({"/", "\\", os.sep} | ({os.altsep} if os.altsep else set()))


_STDERR_LOCK = threading.Lock()
# libjpeg's warnings for compressed data it had to guess at ("Corrupt JPEG data: premature end of data
# segment", "... N extraneous bytes before marker 0xd9"); the image still decodes, partly grey.
_LIBJPEG_WARNING = "Corrupt JPEG data"


class BadInput(Exception):
    """A file that cannot be converted; str(error) is the reason shown in the summary."""


@dataclasses.dataclass(frozen=True)
class VocObject:
    """One <object>: class name, flags, and the VOC box (xmin, ymin, xmax, ymax), 1-based inclusive."""
    name: str
    pose: str
    truncated: bool
    difficult: bool
    box: tuple


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    """One parsed annotation file; `width`/`height` as written in <size> (0 when absent)."""
    filename: str
    width: int
    height: int
    objects: tuple


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """An image ready for a record: JPEG bytes whose decoded pixels are upright RGB of this size."""
    jpeg: bytes
    width: int
    height: int
    repairs: tuple   # human-readable reasons; empty when the original bytes are stored unchanged


def check_image_id(image_id):
    """Raise BadInput for an id that is unsafe as a file stem: empty, a path separator (so no absolute
    path either), `..`, or NUL. Spaces, leading dots and non-ASCII are plain file names and allowed."""
    if (not image_id or "\0" in image_id or image_id in (".", "..") or os.path.isabs(image_id)
            or any(sep in image_id for sep in _ID_SEPARATORS)):
        raise BadInput("unsafe image id %r (a separator, '..', an absolute path or NUL)" % image_id)


def read_image_set(voc_dir, image_set):
    """Ids listed in ImageSets/Main/<image_set>.txt, in file order.

    Per-class lists have lines like '000005  1'; the first token is the id. Blank lines are ignored.
    """
    path = os.path.join(voc_dir, IMAGE_SETS_DIR, image_set + ".txt")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def default_image_ids(voc_dir):
    """The image list when a split names no image set: trainval.txt if present, else every XML."""
    if os.path.exists(os.path.join(voc_dir, IMAGE_SETS_DIR, DEFAULT_IMAGE_SET + ".txt")):
        return read_image_set(voc_dir, DEFAULT_IMAGE_SET)
    names = sorted(os.listdir(os.path.join(voc_dir, ANNOTATIONS_DIR)))
    return [n[:-len(".xml")] for n in names if n.endswith(".xml")]


def _text(element, tag, default=None):
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is None:
            raise BadInput("malformed annotation: missing <%s>" % tag)
        return default
    return child.text.strip()


def _number(element, tag, default=None):
    text = _text(element, tag, None if default is None else str(default))
    try:
        value = float(text)
    except ValueError:
        raise BadInput("malformed annotation: <%s> is %r, not a number" % (tag, text)) from None
    # float() takes "nan" and "inf"; a NaN box passes every clipping comparison and would be stored.
    if not math.isfinite(value):
        raise BadInput("malformed annotation: <%s> is %r, not a finite number" % (tag, text))
    return value


class _HostileXml(Exception):
    pass


def _refuse(*_):
    raise _HostileXml()


def check_no_dtd(xml_bytes):
    """Raise BadInput when the document declares a DTD or an entity, in whatever encoding it is.

    Done on the parsed document by expat's own handlers (the parser ElementTree uses), not by matching
    bytes: a byte pattern misses `<!DOCTYPE` in UTF-16 or any other encoding the declaration names,
    while expat fires these handlers after decoding. A DTD is the only way to declare entities, so this
    stops billion-laughs and external-entity (XXE) attacks before anything is expanded: the handler
    raises at the DOCTYPE's start. (defusedxml does the same with more code and is no dependency here.)
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(xml_bytes, True)
    except _HostileXml:
        raise BadInput("annotation declares a DTD or entities (refused: entity expansion / XXE)") from None
    except expat.ExpatError as e:
        raise BadInput("malformed annotation XML: %s" % e) from None


def parse_annotation(xml_bytes):
    """Parse VOC annotation XML bytes into a VocAnnotation; raise BadInput on hostile or bad XML."""
    if len(xml_bytes) > MAX_XML_BYTES:
        raise BadInput("annotation larger than %d bytes" % MAX_XML_BYTES)
    check_no_dtd(xml_bytes)
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as e:
        raise BadInput("malformed annotation XML: %s" % e) from None
    if root.tag != "annotation":
        raise BadInput("malformed annotation: root is <%s>, not <annotation>" % root.tag)
    size = root.find("size")
    width = int(_number(size, "width", 0)) if size is not None else 0
    height = int(_number(size, "height", 0)) if size is not None else 0
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BadInput("malformed annotation: <object> without <bndbox>")
        box = tuple(_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(
            name=_text(obj, "name"), pose=_text(obj, "pose", "Unspecified"),
            truncated=_number(obj, "truncated", 0) != 0, difficult=_number(obj, "difficult", 0) != 0,
            box=box))
    return VocAnnotation(filename=_text(root, "filename", ""), width=width, height=height,
                         objects=tuple(objects))


def read_annotation(voc_dir, image_id):
    """Read and parse Annotations/<image_id>.xml; BadInput when missing or invalid."""
    check_image_id(image_id)
    path = os.path.join(voc_dir, ANNOTATIONS_DIR, image_id + ".xml")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
    except FileNotFoundError:
        raise BadInput("missing annotation file %s" % path) from None
    return parse_annotation(data)


def find_image(voc_dir, image_id):
    """Path of JPEGImages/<image_id>.<ext> for the first existing IMAGE_EXTENSIONS; BadInput if none."""
    check_image_id(image_id)
    for ext in IMAGE_EXTENSIONS:
        path = os.path.join(voc_dir, IMAGES_DIR, image_id + ext)
        if os.path.isfile(path):
            return path
    raise BadInput("missing image file %s.jpg" % os.path.join(voc_dir, IMAGES_DIR, image_id))


def libjpeg_warnings(jpeg):
    """libjpeg's "Corrupt JPEG data" warnings for decoding `jpeg` (bytes), as TensorFlow's decoder (the
    one training uses) meets them; empty for a sound JPEG.

    Pillow and tf.io.decode_jpeg both accept such data and fill what is missing with grey; neither
    reports it but on stderr, where libjpeg writes it. So the decode runs with file descriptor 2
    redirected (under a lock; other lines written meanwhile are passed on).
    """
    import tensorflow as tf
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE")
        except tf.errors.InvalidArgumentError as e:
            return [e.message.split("}} ", 1)[-1].split(" [Op:")[0]]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode("utf-8", "replace").splitlines()
    others = [line for line in lines if _LIBJPEG_WARNING not in line]
    if others:
        sys.stderr.write("\n".join(others) + "\n")
    return [line.strip() for line in lines if _LIBJPEG_WARNING in line]


def load_image(data, max_pixels=MAX_IMAGE_PIXELS):
    """Validate encoded image bytes and return a LoadedImage whose JPEG decodes to upright RGB.

    Kept unchanged: a baseline RGB JPEG without an EXIF rotation. Repaired (re-encoded as JPEG and
    listed in `repairs`): another format, a non-RGB mode (grayscale, CMYK, RGBA, palette), or an EXIF
    orientation, which is applied because TensorFlow's decoder ignores EXIF while annotation tools
    (and image viewers) show the upright image the boxes were drawn on. Raises BadInput for corrupt,
    truncated, unsupported or over-large (> max_pixels, read from the header) images, and for JPEG data
    that decodes only with libjpeg's "Corrupt JPEG data" warnings (libjpeg_warnings).
    """
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise BadInput("image of %dx%d exceeds the %d-pixel limit" % (width, height, max_pixels))
        image.load()  # full decode: raises on truncated or corrupt data
    except Image.DecompressionBombError as e:
        raise BadInput("image refused as a decompression bomb: %s" % e) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise BadInput("corrupt or unreadable image: %s" % e) from None
    if image.format == "JPEG":
        warnings = libjpeg_warnings(data)
        if warnings:
            raise BadInput("corrupt JPEG data (decodes only with libjpeg warnings: %s)" % "; ".join(warnings))
    repairs = []
    if image.format != "JPEG":
        repairs.append("%s image re-encoded as JPEG" % image.format)
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation tag
    if orientation not in (0, 1):
        image = ImageOps.exif_transpose(image)
        repairs.append("EXIF orientation %d applied" % orientation)
    if image.mode != "RGB":
        repairs.append("%s image converted to RGB" % image.mode)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            # Transparent pixels over white, as a viewer shows them (alpha is not part of VOC).
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            image = canvas
        else:
            image = image.convert("RGB")
    if not repairs:
        return LoadedImage(jpeg=data, width=width, height=height, repairs=())
    out = io.BytesIO()
    # 4:4:4 chroma keeps colour edges; no exif= argument, so the applied orientation is not re-applied.
    image.save(out, format="JPEG", quality=REENCODE_QUALITY, subsampling=0)
    return LoadedImage(jpeg=out.getvalue(), width=image.width, height=image.height,
                       repairs=tuple(repairs))
