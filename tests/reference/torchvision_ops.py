"""Makes the PyPI torchvision importable on the CPU torch (REFERENCES.md): offline generators only.

PyPI's torchvision wheel is built against the CUDA torch, so its C ops do not load and
`import torchvision` fails at the `torchvision::nms` registration. `install()` defines `torchvision::nms`
(a plain-torch greedy NMS, the algorithm of torchvision's C++ kernel: boxes by descending score, drop
those with IoU > threshold against a kept box) and `torchvision::qnms` before the import, and makes
torchvision's op-presence checks pass. Run with the reference venv's python, never in CI.
"""

import torch


def _nms(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for position in range(order.numel()):
        i = int(order[position])
        if suppressed[i]:
            continue
        keep.append(i)
        top_left = torch.maximum(boxes[i, :2], boxes[:, :2])
        bottom_right = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


_LIBRARY = None


def install():
    """Registers the ops once; then `import torchvision` works on the CPU torch."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", _nms, "CPU")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("qnms", _nms, "CPU")
    import torchvision.extension as extension
    extension._has_ops = lambda: True
    extension._assert_has_ops = lambda: None
    import torchvision.ops.boxes as boxes
    boxes._assert_has_ops = lambda: None
