"""Conversion speed (images/s) against plain read + decode of the same files, in the same run.

A VOC-like set (500x375 JPEGs of quality 90, 1-5 boxes each, ImageSets/Main/trainval.txt) is
generated into a temporary directory; then the same thread count runs (a) Pillow open + full decode
of every JPEG and (b) the converter (annotation pass, validation, records, atomic shards). The last
line printed is one JSON object.

    python3 benchmarks/convert.py --images 1000 --threads 2
"""

import argparse
import concurrent.futures
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import convert  # noqa: E402

WIDTH, HEIGHT = 500, 375     # the most common VOC image size
JPEG_QUALITY = 90
NUM_SHARDS = 8
_CLASSES = ("cat", "dog", "person")


def _textured(rng):
    """Smooth colour texture with grain: compresses like a photo (tens of KB), not like noise."""
    small = rng.integers(0, 255, (HEIGHT // 25, WIDTH // 25, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC), np.int16)
    return np.clip(base + rng.integers(-8, 9, (HEIGHT, WIDTH, 1)), 0, 255).astype(np.uint8)


def make_voc_like(root, count, seed=0):
    """Write `count` images and annotations under root/VOC (VOC layout); returns that path."""
    rng = np.random.default_rng(seed)
    voc_dir = os.path.join(root, "VOC")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc_dir, sub))
    ids = ["%06d" % i for i in range(count)]
    for image_id in ids:
        out = io.BytesIO()
        Image.fromarray(_textured(rng)).save(out, format="JPEG", quality=JPEG_QUALITY)
        with open(os.path.join(voc_dir, "JPEGImages", image_id + ".jpg"), "wb") as f:
            f.write(out.getvalue())
        objects = []
        for _ in range(int(rng.integers(1, 6))):
            x0, x1 = np.sort(rng.integers(1, WIDTH + 1, 2))
            y0, y1 = np.sort(rng.integers(1, HEIGHT + 1, 2))
            objects.append("<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>"
                           "<difficult>0</difficult><bndbox><xmin>%d</xmin><ymin>%d</ymin><xmax>%d"
                           "</xmax><ymax>%d</ymax></bndbox></object>" % (
                               _CLASSES[int(rng.integers(3))], x0, y0, x1 + 1, y1 + 1))
        with open(os.path.join(voc_dir, "Annotations", image_id + ".xml"), "w") as f:
            f.write("<annotation><filename>%s.jpg</filename><size><width>%d</width><height>%d"
                    "</height><depth>3</depth></size>%s</annotation>" % (
                        image_id, WIDTH, HEIGHT, "".join(objects)))
    with open(os.path.join(voc_dir, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.writelines(i + "\n" for i in ids)
    return voc_dir


def read_decode(voc_dir, threads):
    """Seconds to open and fully decode every JPEG with Pillow over `threads` threads."""
    paths = [os.path.join(voc_dir, "JPEGImages", n)
             for n in sorted(os.listdir(os.path.join(voc_dir, "JPEGImages")))]

    def one(path):
        with open(path, "rb") as f:
            Image.open(io.BytesIO(f.read())).load()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        voc_dir = make_voc_like(root, args.images)
        read_decode(voc_dir, args.threads)  # warm the page cache so both timings read from memory
        decode_s = read_decode(voc_dir, args.threads)
        start = time.perf_counter()
        results, _ = convert.convert(root, os.path.join(root, "out"),
                                     {"train": [convert.Split("VOC", None)]}, {"train": NUM_SHARDS},
                                     num_threads=args.threads)
        convert_s = time.perf_counter() - start
        assert results["train"].images == args.images and not results["train"].skipped
    convert_rate, decode_rate = args.images / convert_s, args.images / decode_s
    print(json.dumps({"images": args.images, "threads": args.threads,
                      "image_size": [WIDTH, HEIGHT],
                      "convert_images_per_s": round(convert_rate, 1),
                      "read_decode_images_per_s": round(decode_rate, 1),
                      "ratio": round(convert_rate / decode_rate, 3)}))


if __name__ == "__main__":
    main()
