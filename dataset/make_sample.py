"""Deterministic generator of the embedded sample dataset `dataset/sample/` (VOC layout).

Synthetic but a fair small detection task: textured backgrounds (noise, gradients, stripes, blotches)
and eight shape classes drawn with varied size (5%-90% of the short side), colour, aspect and rotation,
with overlaps and truncation at the borders. Boxes are tight: each is computed from the pixels of the
object that remain visible in the final image (VOC annotates the visible extent), so occlusion and
border clipping are already applied.

The same images are also described as COCO instances JSON (annotations/instances_train.json and
instances_val.json, file names relative to JPEGImages/) and in YOLO / Ultralytics layout (yolo/: data.yaml,
train.txt and val.txt listing ./images/<id>.jpg, labels/<id>.txt, and images/, a symbolic link to
../JPEGImages), so nothing is stored twice.

Every image is rendered from its own RNG seeded by (SAMPLE_SEED, image number), so any subset can be
regenerated alone and compared byte for byte with the committed files:

    python3 dataset/make_sample.py                       # rewrite dataset/sample/ (and its COCO JSON)
    python3 dataset/make_sample.py --output_dir /tmp/s --only 1,2,3
"""

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SAMPLE_SEED = 20161  # fixed: rerunning reproduces identical files
NUM_TRAIN = 250
NUM_VAL = 80
JPEG_QUALITY = 85     # keeps the committed sample under 10 MB
CLASS_NAMES = ("circle", "cross", "ellipse", "hexagon", "ring", "square", "star", "triangle")
# The COCO-format description (annotations/instances_{train,val}.json over the same JPEGImages/):
# category ids with gaps, as COCO's 80 ids in 1..90, so the contiguous-id map is exercised.
COCO_CATEGORY_IDS = (1, 3, 4, 7, 9, 12, 14, 18)
COCO_SUPERCATEGORIES = {"circle": "round", "ellipse": "round", "ring": "round", "hexagon": "polygon",
                        "square": "polygon", "triangle": "polygon", "cross": "other", "star": "other"}
COCO_ANNOTATIONS_DIR = "annotations"
YOLO_DIR = "yolo"
MIN_SIDE, MAX_SIDE = 250, 500
MAX_OBJECTS = 6
MIN_SIZE_FRACTION, MAX_SIZE_FRACTION = 0.05, 0.9
MIN_VISIBLE_FRACTION = 0.35   # a placement hiding more of an earlier object is rejected
OCCLUDED_FRACTION = 0.6       # less visible than this -> difficult (heavily occluded)
TINY_SIDE_PX = 16             # longest visible side below this -> difficult (tiny)
MIN_BOX_SIDE_PX = 4           # thinner visible slivers are rejected, never annotated
PLACEMENT_TRIES = 30
# Aspect (width / height before rotation) per class: circle and ring stay round so that "ellipse"
# remains a distinct class.
ASPECT_RANGE = {"circle": (0.92, 1.08), "ring": (0.85, 1.15), "ellipse": (1.7, 2.6)}
DEFAULT_ASPECT_RANGE = (0.75, 1.33)

_DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")


def image_id(number):
    """VOC-style id (file stem) of image `number` (1-based): '000001'."""
    return "%06d" % number


def split_of(number):
    """'train' for images 1..NUM_TRAIN, 'val' for the NUM_VAL after them."""
    return "train" if number <= NUM_TRAIN else "val"


def _unit_outline(name, num_points=64):
    """Outline(s) of a class in unit coordinates (radius ~1 around the origin): list of [P, 2] arrays.

    The ring returns [outer, inner]; the inner one is erased after the outer is filled.
    """
    t = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    if name in ("circle", "ellipse"):
        return [circle]
    if name == "ring":
        return [circle, circle * 0.55]
    if name == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)]
    if name == "triangle":
        a = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        return [np.stack([np.cos(a), -np.sin(a)], axis=1)]
    if name == "hexagon":
        a = np.arange(6) * np.pi / 3
        return [np.stack([np.cos(a), np.sin(a)], axis=1)]
    if name == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [np.stack([r * np.cos(a), r * np.sin(a)], axis=1)]
    if name == "cross":
        w = 0.33
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                          [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=float)]
    raise ValueError("unknown class %r" % name)


def _background(rng, width, height):
    """A textured RGB background, uint8 [height, width, 3]."""
    kind = rng.integers(4)
    base = rng.uniform(20, 235, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # smooth noise: low-resolution noise upsampled
        small = rng.normal(0, 40, size=(height // 16 + 1, width // 16 + 1, 3))
        noise = np.asarray(Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC), dtype=np.float32) - 128
        img = base + noise
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(20, 235, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
        ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
        img = base + ramp[..., None] * (other - base)
    elif kind == 2:  # stripes at a random angle and period
        other = rng.uniform(20, 235, size=3)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 60)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        img = base + wave[..., None] * (other - base)
    else:  # soft blotches (blurred so they never read as crisp shapes)
        canvas = Image.new("RGB", (width, height), tuple(int(c) for c in base))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(6, 16))):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(10, width / 3), rng.uniform(10, height / 3)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry],
                         fill=tuple(int(c) for c in rng.uniform(20, 235, size=3)))
        img = np.asarray(canvas.filter(ImageFilter.GaussianBlur(12)), dtype=np.float32)
    img = img + rng.normal(0, 3, size=(height, width, 1))  # mild grain, shared by the channels
    return np.clip(img, 0, 255).astype(np.uint8)


def _distinct_colour(rng, background):
    """An object colour at least some distance from the background's mean colour."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - mean).sum() > 150:
            return colour
    return 255 - mean


def _shape_mask(rng, name, width, height):
    """Rasterise one randomly placed, scaled, rotated shape: (bool mask [H, W], truncated flag)."""
    short = min(width, height)
    # Log-uniform size so small and large objects are both common.
    size = short * np.exp(rng.uniform(np.log(MIN_SIZE_FRACTION), np.log(MAX_SIZE_FRACTION)))
    lo, hi = ASPECT_RANGE.get(name, DEFAULT_ASPECT_RANGE)
    aspect = rng.uniform(lo, hi)
    half_w, half_h = size / 2 * np.sqrt(aspect), size / 2 / np.sqrt(aspect)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cx, cy = rng.uniform(0.05 * width, 0.95 * width), rng.uniform(0.05 * height, 0.95 * height)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    outlines = [(o * [half_w, half_h]) @ rotation.T + [cx, cy] for o in _unit_outline(name)]
    draw.polygon([tuple(p) for p in outlines[0]], fill=255)
    for hole in outlines[1:]:
        draw.polygon([tuple(p) for p in hole], fill=0)
    outer = outlines[0]
    # Pixel (i, j) covers [j, j+1] x [i, i+1]; the shape is cut when its outline leaves the canvas.
    truncated = bool(outer[:, 0].min() < 0 or outer[:, 1].min() < 0 or
                     outer[:, 0].max() > width or outer[:, 1].max() > height)
    return np.asarray(mask) > 0, truncated


def box_of_mask(mask):
    """VOC (xmin, ymin, xmax, ymax), 1-based inclusive, of the True pixels of `mask` [H, W]."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]) + 1, int(rows[0]) + 1, int(cols[-1]) + 1, int(rows[-1]) + 1


def render(number):
    """Render image `number`: (PIL RGB image, list of object dicts name/box/truncated/difficult/area).

    `area` is the object's visible pixel count, what COCO's annotation `area` measures (its mask's).
    """
    rng = np.random.default_rng([SAMPLE_SEED, number])
    if rng.uniform() < 0.2:
        width = height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    else:
        long_side = int(rng.integers(375, MAX_SIDE + 1))
        short_side = int(rng.integers(MIN_SIDE, long_side - 40))
        width, height = (long_side, short_side) if rng.uniform() < 0.7 else (short_side, long_side)
    image = _background(rng, width, height)
    # Probability ~7% of an empty image; otherwise 1..MAX_OBJECTS.
    count = 0 if rng.uniform() < 0.07 else int(rng.integers(1, MAX_OBJECTS + 1))
    owner = np.full((height, width), -1, dtype=np.int16)  # index of the object each pixel shows
    full_area, objects = [], []
    for _ in range(count):
        name = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        for _ in range(PLACEMENT_TRIES):
            mask, truncated = _shape_mask(rng, name, width, height)
            if mask.sum() < MIN_BOX_SIDE_PX ** 2:
                continue
            trial = np.where(mask, len(objects), owner)
            visible = [np.count_nonzero(trial == k) / full_area[k] for k in range(len(objects))]
            if all(v >= MIN_VISIBLE_FRACTION for v in visible):
                break
        else:
            continue  # no acceptable placement: draw fewer objects
        owner = trial
        full_area.append(mask.sum())
        objects.append({"name": name, "truncated": truncated})
        colour = _distinct_colour(rng, image)
        # A soft linear shading across the shape, so objects are not flat colour patches.
        tilt = rng.normal(0, 0.08, size=2)
        shade = (tilt[0] * (np.arange(width) - width / 2)[None, :] +
                 tilt[1] * (np.arange(height) - height / 2)[:, None])[..., None]
        image = np.where(mask[..., None], np.clip(colour + shade, 0, 255), image).astype(np.uint8)
    annotated = []
    for k, obj in enumerate(objects):
        visible_mask = owner == k
        xmin, ymin, xmax, ymax = box_of_mask(visible_mask)
        if min(xmax - xmin, ymax - ymin) + 1 < MIN_BOX_SIDE_PX:
            continue  # a sliver: not annotated, like unrecognisable fragments in VOC
        occluded = visible_mask.sum() / full_area[k] < OCCLUDED_FRACTION
        tiny = max(xmax - xmin, ymax - ymin) + 1 < TINY_SIDE_PX
        annotated.append(dict(obj, box=(xmin, ymin, xmax, ymax), difficult=bool(occluded or tiny),
                              area=int(visible_mask.sum())))
    return Image.fromarray(image, "RGB"), annotated


def annotation_xml(number, width, height, objects):
    """VOC devkit-style annotation XML text for one image."""
    lines = ["<annotation>", "\t<folder>sample</folder>",
             "\t<filename>%s.jpg</filename>" % image_id(number),
             "\t<source>", "\t\t<database>SSD synthetic sample</database>", "\t</source>",
             "\t<size>", "\t\t<width>%d</width>" % width, "\t\t<height>%d</height>" % height,
             "\t\t<depth>3</depth>", "\t</size>", "\t<segmented>0</segmented>"]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["box"]
        lines += ["\t<object>", "\t\t<name>%s</name>" % obj["name"], "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>%d</truncated>" % obj["truncated"],
                  "\t\t<difficult>%d</difficult>" % obj["difficult"],
                  "\t\t<bndbox>", "\t\t\t<xmin>%d</xmin>" % xmin, "\t\t\t<ymin>%d</ymin>" % ymin,
                  "\t\t\t<xmax>%d</xmax>" % xmax, "\t\t\t<ymax>%d</ymax>" % ymax, "\t\t</bndbox>",
                  "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def write_image(output_dir, number):
    """Render image `number` and write its JPEG and annotation under `output_dir` (VOC layout)."""
    image, objects = render(number)
    image.save(os.path.join(output_dir, "JPEGImages", image_id(number) + ".jpg"),
               quality=JPEG_QUALITY)
    with open(os.path.join(output_dir, "Annotations", image_id(number) + ".xml"), "w") as f:
        f.write(annotation_xml(number, image.width, image.height, objects))


def write_sample(output_dir, numbers=None):
    """Write images `numbers` (default: all) and the train/val image sets under `output_dir`."""
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    all_numbers = range(1, NUM_TRAIN + NUM_VAL + 1)
    for number in (all_numbers if numbers is None else numbers):
        write_image(output_dir, number)
    for split in ("train", "val"):
        with open(os.path.join(output_dir, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.writelines(image_id(n) + "\n" for n in all_numbers if split_of(n) == split)


def coco_box(voc_box):
    """The COCO [x, y, w, h] of a VOC (xmin, ymin, xmax, ymax) 1-based inclusive box (pixel k of VOC
    spans [k - 1, k], dataset/voc_boxes.py): [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]."""
    xmin, ymin, xmax, ymax = voc_box
    return [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]


def coco_entries(number):
    """(COCO image dict, [COCO annotation dicts without "id"]) of image `number`, rendered again.

    Difficult objects become `iscrowd: 1`, COCO's ignore regions, so the sample exercises the crowd
    path of training and evaluation; the segmentation is the box's polygon (the sample has no masks).
    """
    image, objects = render(number)
    entry = {"id": number, "file_name": image_id(number) + ".jpg", "width": image.width,
             "height": image.height}
    annotations = []
    for obj in objects:
        x, y, w, h = coco_box(obj["box"])
        annotations.append({
            "image_id": number, "category_id": COCO_CATEGORY_IDS[CLASS_NAMES.index(obj["name"])],
            "bbox": [x, y, w, h], "area": obj["area"], "iscrowd": int(obj["difficult"]),
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    return entry, annotations


def coco_instances_text(split):
    """The instances JSON text of `split` ('train' or 'val'): one image or annotation per line."""
    numbers = [n for n in range(1, NUM_TRAIN + NUM_VAL + 1) if split_of(n) == split]
    images, annotations = [], []
    for number in numbers:
        entry, anns = coco_entries(number)
        images.append(entry)
        annotations.extend(anns)
    for k, annotation in enumerate(annotations):
        annotation["id"] = k + 1
    categories = [{"id": i, "name": n, "supercategory": COCO_SUPERCATEGORIES[n]}
                  for i, n in zip(COCO_CATEGORY_IDS, CLASS_NAMES)]

    def block(items):
        return "[\n" + ",\n".join(json.dumps(item, sort_keys=True) for item in items) + "\n]"
    info = {"description": "SSD synthetic sample, COCO format of dataset/sample (make_sample.py)",
            "version": "1.0"}
    return ('{"info": %s,\n"licenses": [],\n"categories": %s,\n"images": %s,\n"annotations": %s}\n'
            % (json.dumps(info, sort_keys=True), block(categories), block(images), block(annotations)))


def write_coco_sample(output_dir):
    """Write <output_dir>/annotations/instances_{train,val}.json, describing JPEGImages/."""
    os.makedirs(os.path.join(output_dir, COCO_ANNOTATIONS_DIR), exist_ok=True)
    for split in ("train", "val"):
        with open(os.path.join(output_dir, COCO_ANNOTATIONS_DIR, "instances_%s.json" % split), "w") as f:
            f.write(coco_instances_text(split))


def yolo_label_text(number):
    """The YOLO label file of image `number`: "class cx cy w h" per object, normalized, class ids 0-based.

    A VOC box (xmin, ymin, xmax, ymax), 1-based inclusive, spans [xmin - 1, xmax] (dataset/voc_boxes.py),
    so cx = (xmin - 1 + xmax) / 2 / W and w = (xmax - xmin + 1) / W; six decimals, as Ultralytics writes.
    """
    image, objects = render(number)
    lines = []
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["box"]
        lines.append("%d %.6f %.6f %.6f %.6f" % (
            CLASS_NAMES.index(obj["name"]), (xmin - 1 + xmax) / 2 / image.width,
            (ymin - 1 + ymax) / 2 / image.height, (xmax - xmin + 1) / image.width,
            (ymax - ymin + 1) / image.height))
    return "".join(line + "\n" for line in lines)


def write_yolo_sample(output_dir, numbers=None):
    """Write <output_dir>/yolo/: data.yaml, train.txt, val.txt, labels/ and the images/ link."""
    yolo_dir = os.path.join(output_dir, YOLO_DIR)
    os.makedirs(os.path.join(yolo_dir, "labels"), exist_ok=True)
    if not os.path.lexists(os.path.join(yolo_dir, "images")):
        os.symlink(os.path.join("..", "JPEGImages"), os.path.join(yolo_dir, "images"))
    all_numbers = range(1, NUM_TRAIN + NUM_VAL + 1)
    for number in (all_numbers if numbers is None else numbers):
        with open(os.path.join(yolo_dir, "labels", image_id(number) + ".txt"), "w") as f:
            f.write(yolo_label_text(number))
    for split in ("train", "val"):
        with open(os.path.join(yolo_dir, split + ".txt"), "w") as f:
            f.writelines("./images/%s.jpg\n" % image_id(n) for n in all_numbers if split_of(n) == split)
    with open(os.path.join(yolo_dir, "data.yaml"), "w") as f:
        f.write("# The sample in YOLO / Ultralytics layout (dataset/make_sample.py); images/ links to ../JPEGImages\n"
                "path: .\ntrain: train.txt\nval: val.txt\nnames:\n"
                + "".join("  %d: %s\n" % (i, name) for i, name in enumerate(CLASS_NAMES)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=_DEFAULT_OUTPUT)
    parser.add_argument("--only", default="", help="comma-separated image numbers (1-based)")
    args = parser.parse_args()
    numbers = [int(n) for n in args.only.split(",")] if args.only else None
    write_sample(args.output_dir, numbers)
    if numbers is None:
        write_coco_sample(args.output_dir)
    write_yolo_sample(args.output_dir, numbers)


if __name__ == "__main__":
    main()
