"""Runs the real torchvision SSD300-VGG16 on seeded weights and stores its outputs as a test fixture.

Never run in CI and never a dependency: tests/test_torchvision_import.py re-creates the same weights
from the seed (tests/reference/torchvision_weights.py, numpy only), writes them as a .pth without
torch, imports them through nets/torchvision_ssd.py and compares against the file this writes
(tests/fixtures/torchvision_parity.npz). Regenerate it with the CPU torch and torchvision (installed
--no-deps; tests/reference/torchvision_ops.py makes their import work) from the repository root:

    python3 -m tests.reference.torchvision_parity

What runs: `torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None,
num_classes=91)` in eval mode, with the seeded state dict loaded strictly, on 300x300 crops of the
first sample JPEGs (decoded with PIL, as the test does; a pixel checksum is stored). Stored: the
state-dict names and shapes (so the test draws the same weights), the head outputs -- the 91-column
logits and the (dx, dy, dw, dh) box codes of every ANCHOR_STRIDE-th anchor and of the last two maps, plus per feature map the
largest |value| over all its anchors (the tolerance scale; for the logits over the 81 real columns,
the N/A columns separately) -- the anchors of those positions, and the
final detections (boxes in pixels of the 300x300 input, scores, 91-column labels).
"""

import os

import numpy as np
from absl import app, flags
from PIL import Image

from . import torchvision_weights

FLAGS = flags.FLAGS
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
flags.DEFINE_string("output", os.path.join(_REPO, "tests", "fixtures", "torchvision_parity.npz"),
                    "Fixture file to write.")

IMAGES = ("000001.jpg", "000005.jpg")   # both at least 300 px wide and 282 tall: cropped, padded none
IMAGE_SIZE = 300
ANCHOR_STRIDE = 17
SAMPLE_DIR = os.path.join(_REPO, "dataset", "sample", "JPEGImages")


def sample_images():
    """uint8 [N, 300, 300, 3]: the top-left 300x300 of each image (zero-padded below when shorter)."""
    batch = np.zeros((len(IMAGES), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, name in enumerate(IMAGES):
        pixels = np.asarray(Image.open(os.path.join(SAMPLE_DIR, name)).convert("RGB"))[:IMAGE_SIZE, :IMAGE_SIZE]
        batch[i, :pixels.shape[0], :pixels.shape[1]] = pixels
    return batch


def main(argv):
    del argv
    from . import torchvision_ops
    torchvision_ops.install()
    import torch
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    names_and_shapes = [(name, tuple(value.shape)) for name, value in model.state_dict().items()]
    state = torchvision_weights.seeded_state_dict(names_and_shapes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

    pixels = sample_images()
    images = [torch.from_numpy(p).permute(2, 0, 1).float() / 255.0 for p in pixels]   # torchvision: 0-1 CHW
    with torch.no_grad():
        transformed, _ = model.transform(images)
        features = list(model.backbone(transformed.tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(transformed, features)[0]                  # [A, 4] xyxy pixels
        detections = model(images)

    logits, codes = head["cls_logits"].numpy(), head["bbox_regression"].numpy()     # [N, A, 91], [N, A, 4]
    sizes = [f.shape[-1] for f in features]
    per_map = [s * s * b for s, b in zip(sizes, (4, 6, 6, 6, 4, 4))]
    bounds = np.cumsum([0] + per_map)
    # The tolerance scale of the logits is taken over the 81 real columns: the N/A columns (-1e4 biases)
    # would make it 1e4 and the check a thousand times looser; they get their own scale.
    real = np.delete(logits, torchvision_weights.NA_COLUMNS, axis=2)
    na = logits[:, :, list(torchvision_weights.NA_COLUMNS)]
    logits_scale = [np.abs(real[:, a:b]).max() for a, b in zip(bounds[:-1], bounds[1:])]
    na_scale = [np.abs(na[:, a:b]).max() for a, b in zip(bounds[:-1], bounds[1:])]
    codes_scale = [np.abs(codes[:, a:b]).max() for a, b in zip(bounds[:-1], bounds[1:])]
    # Every ANCHOR_STRIDE-th anchor, and all of the two smallest maps (the stride would miss the 1x1 map).
    index = np.union1d(np.arange(0, logits.shape[1], ANCHOR_STRIDE), np.arange(bounds[-3], bounds[-1]))
    det = {}
    for i, d in enumerate(detections):
        det[f"detection_boxes_{i}"] = d["boxes"].numpy()
        det[f"detection_scores_{i}"] = d["scores"].numpy()
        det[f"detection_labels_{i}"] = d["labels"].numpy()
        print(f"{IMAGES[i]}: {len(d['scores'])} detections, top scores {d['scores'][:5].numpy()}")
    np.savez_compressed(
        FLAGS.output,
        names=np.array([n for n, _ in names_and_shapes]),
        shapes=np.array([",".join(map(str, s)) for _, s in names_and_shapes]),
        seed=torchvision_weights.SEED, images=np.array(IMAGES),
        pixel_sums=pixels.reshape(len(IMAGES), -1).astype(np.int64).sum(axis=1),
        map_bounds=bounds, logits_scale=np.array(logits_scale), na_logits_scale=np.array(na_scale), codes_scale=np.array(codes_scale),
        anchor_index=index, logits=logits[:, index], codes=codes[:, index], anchors=anchors[index].numpy(),
        torch_version=torch.__version__, **det)
    print(f"wrote {FLAGS.output}: logits max |.| per map {np.round(logits_scale, 3)} (N/A columns {np.round(na_scale, 1)}), "
          f"codes {np.round(codes_scale, 3)}")


if __name__ == "__main__":
    app.run(main)
