"""Conversion speed (images/s) against plain read + decode of the same files, in the same run.

A VOC-like set (500x375 JPEGs of quality 90, 1-5 boxes each, ImageSets/Main/trainval.txt) is
generated into a temporary directory; then the same thread count runs (a) Pillow open + full decode
of every JPEG and (b) the converter (annotation pass, validation, records, atomic shards). The last
line printed is one JSON object.

    python3 -m benchmarks.convert --images 1000 --threads 2
"""

import concurrent.futures
import io
import json
import os
import tempfile
import time

from absl import app, flags
from PIL import Image

from benchmarks.synthetic import HEIGHT, WIDTH, make_voc_like
from dataset import convert

NUM_SHARDS = 8

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 1000, "Images in the generated VOC-like set.")
flags.DEFINE_integer("threads", 2, "Threads of both the decode baseline and the converter.")


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


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        voc_dir = make_voc_like(root, FLAGS.images)
        read_decode(voc_dir, FLAGS.threads)  # warm the page cache so both timings read from memory
        decode_s = read_decode(voc_dir, FLAGS.threads)
        start = time.perf_counter()
        results, _ = convert.convert(root, os.path.join(root, "out"),
                                     {"train": [convert.Split("VOC", None)]}, {"train": NUM_SHARDS},
                                     num_threads=FLAGS.threads)
        convert_s = time.perf_counter() - start
        assert results["train"].images == FLAGS.images and not results["train"].skipped
    convert_rate, decode_rate = FLAGS.images / convert_s, FLAGS.images / decode_s
    print(json.dumps({"images": FLAGS.images, "threads": FLAGS.threads,
                      "image_size": [WIDTH, HEIGHT],
                      "convert_images_per_s": round(convert_rate, 1),
                      "read_decode_images_per_s": round(decode_rate, 1),
                      "ratio": round(convert_rate / decode_rate, 3)}))


if __name__ == "__main__":
    app.run(main)
