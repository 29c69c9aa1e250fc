"""Runs torchvision's ssdlite320_mobilenet_v3_large and stores its anchors and outputs as a fixture.

Never run in CI and never a dependency: tests/test_ssdlite.py compares the project against the file
this writes (tests/fixtures/torchvision_ssdlite.npz). Regenerate it from the repository root with the
reference venv (torch CPU + torchvision installed --no-deps, REFERENCES.md):

    python3 -m tests.reference.torchvision_ssdlite --output tests/fixtures/torchvision_ssdlite.npz

What runs: the installed torchvision (its ops registered by tests/reference/torchvision_ops.py),
`ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)` with its
state dict replaced by tests/reference/seeded_weights.py's values, in eval mode, on seeded 320x320 RGB
images (no resize happens at that size). Stored:

* `anchors`: the DefaultBoxGenerator's boxes for those images, xyxy pixels [3234, 4];
* `names`, `shapes` (flattened, with `ranks`): the state dict, so the test rebuilds the weights;
* for `num_images` images of seeded_weights.seeded_images(N, 320, seed) (regenerated, not stored): the head outputs `cls_logits` [N, 3234, C+1] and `bbox_regression`
  [N, 3234, 4] (torchvision's dx, dy, dw, dh order); the detections of `model(images)` padded to 300:
  `det_boxes` xyxy pixels, `det_scores`, `det_labels` (0 in padding), `num_detections`;
* seeded ground truth `gt_boxes` (xyxy pixels) and `gt_labels` for the first image, the SSDMatcher's
  `matched_idxs` against the anchors, and `model.compute_loss`'s two terms (`loss_bbox_regression`,
  `loss_classification`) for that image's head outputs;
* `num_parameters` at 91 classes, reduced tail, and `num_parameters_full_tail` of the same detector
  on the full-tail MobileNetV3-Large (built as ssdlite320_mobilenet_v3_large builds it with an
  ImageNet backbone, without downloading the weights).
"""

from absl import app, flags

from tests.reference import seeded_weights

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "tests/fixtures/torchvision_ssdlite.npz", "fixture file to write")

NUM_CLASSES = 5          # with background: small outputs, every head shape still exercised
NUM_IMAGES = 1
SEED = 25
NUM_BOXES = 7
IMAGE_SIZE = 320


def _full_tail_parameters(torch, torchvision):
    from functools import partial

    from torchvision.models.detection import ssdlite
    from torchvision.models.mobilenetv3 import mobilenet_v3_large
    norm_layer = partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=False)
    extractor = ssdlite._mobilenet_extractor(backbone, 6, norm_layer)
    anchors = torchvision.models.detection.anchor_utils.DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2,
                                                                            max_ratio=0.95)
    channels = torchvision.models.detection._utils.retrieve_out_channels(extractor, (320, 320))
    head = ssdlite.SSDLiteHead(channels, anchors.num_anchors_per_location(), 91, norm_layer)
    return sum(p.numel() for p in extractor.parameters()) + sum(p.numel() for p in head.parameters())


def main(argv):
    del argv
    import numpy as np
    import torch

    from tests.reference import torchvision_ops
    torchvision_ops.install()
    import torchvision
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    full = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    num_parameters = sum(p.numel() for p in full.parameters())

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    state = model.state_dict()
    names = list(state)
    shapes = [tuple(state[n].shape) for n in names]
    values = seeded_weights.seeded_state(names, shapes, SEED)
    model.load_state_dict({n: torch.from_numpy(v) for n, v in values.items()})
    model.eval()

    images = seeded_weights.seeded_images(NUM_IMAGES, IMAGE_SIZE, SEED)
    batch = [torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 for image in images]
    with torch.no_grad():
        image_list, _ = model.transform(batch)
        features = list(model.backbone(image_list.tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        detections = model(batch)

    # Matching and loss on seeded boxes: the last two are the same box jittered by a pixel, so they share
    # their best anchor and the SSDMatcher's rule for a shared anchor (the later box takes it) shows.
    rng = np.random.default_rng(SEED + 1)
    corners = np.sort(rng.uniform(0, IMAGE_SIZE, (NUM_BOXES - 1, 2, 2)), axis=1)     # [G - 1, (min, max), (x, y)]
    gt_boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)  # xyxy pixels
    gt_boxes = np.concatenate([gt_boxes, gt_boxes[-1:] + np.float32(1.0)], axis=0)
    gt_labels = rng.integers(1, NUM_CLASSES, NUM_BOXES)
    targets = [{"boxes": torch.from_numpy(gt_boxes), "labels": torch.from_numpy(gt_labels)}]
    with torch.no_grad():
        iou = torchvision.ops.box_iou(targets[0]["boxes"], anchors[0])
        matched = model.proposal_matcher(iou)
        first_head = {key: value[:1] for key, value in head.items()}
        losses = model.compute_loss(targets, first_head, anchors[:1], [matched])

    k = model.detections_per_img
    det_boxes = np.zeros((NUM_IMAGES, k, 4), np.float32)
    det_scores = np.zeros((NUM_IMAGES, k), np.float32)
    det_labels = np.zeros((NUM_IMAGES, k), np.int64)
    counts = np.zeros((NUM_IMAGES,), np.int64)
    for i, detection in enumerate(detections):
        n = detection["boxes"].shape[0]
        counts[i] = n
        det_boxes[i, :n] = detection["boxes"].numpy()
        det_scores[i, :n] = detection["scores"].numpy()
        det_labels[i, :n] = detection["labels"].numpy()
    np.savez_compressed(
        FLAGS.output,
        anchors=anchors[0].numpy().astype(np.float32),
        names=np.array(names),
        shapes=np.array([s for shape in shapes for s in shape], np.int64),
        ranks=np.array([len(s) for s in shapes], np.int64),
        seed=np.int64(SEED),
        num_images=np.int64(NUM_IMAGES),
        cls_logits=head["cls_logits"].numpy(),
        bbox_regression=head["bbox_regression"].numpy(),
        det_boxes=det_boxes, det_scores=det_scores, det_labels=det_labels, num_detections=counts,
        gt_boxes=gt_boxes, gt_labels=gt_labels, matched_idxs=matched.numpy(),
        loss_bbox_regression=np.float32(losses["bbox_regression"]),
        loss_classification=np.float32(losses["classification"]),
        num_parameters=np.int64(num_parameters),
        num_parameters_full_tail=np.int64(_full_tail_parameters(torch, torchvision)),
        torchvision_version=np.array(torchvision.__version__),
    )
    print(f"wrote {FLAGS.output}: {len(names)} state-dict tensors, {int(counts.sum())} detections, "
          f"{num_parameters} parameters (91 classes)")


if __name__ == "__main__":
    app.run(main)
