"""Makes `import torchvision` work on the CPU build of torch (REFERENCES.md: PyPI's torchvision is built
against the CUDA torch, so its C ops do not load and the import fails at `torchvision::nms`).

`install()` must run before torchvision is imported: it defines `torchvision::nms` and
`torchvision::qnms` with torch.library (greedy NMS in plain torch: a box is dropped when its IoU with a
kept higher-scoring box is > the threshold, as torchvision's kernel does) and makes torchvision's
op-presence checks pass. Only for the offline generators; torch is never a project dependency.
"""

import torch

_LIBRARY = None


def _nms(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        top_left = torch.maximum(boxes[i, :2], boxes[i + 1:, :2])
        bottom_right = torch.minimum(boxes[i, 2:], boxes[i + 1:, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        iou = inter / (areas[i] + areas[i + 1:] - inter)
        suppressed[i + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _qnms(dets, scores, iou_threshold):
    raise NotImplementedError("quantized NMS is not used by the generators")


def install():
    global _LIBRARY
    if _LIBRARY is not None:
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", _nms, "CPU")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("qnms", _qnms, "CPU")
    import torchvision.extension as extension
    extension._has_ops = lambda: True
    extension._assert_has_ops = lambda: None
    import torchvision.ops.boxes as boxes
    boxes._assert_has_ops = lambda: None
