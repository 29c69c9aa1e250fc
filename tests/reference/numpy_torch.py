"""A numpy stand-in for the few torch calls that ssd.pytorch's reference files make.

Not part of the project and never run in CI: with `--torch numpy`, tests/reference/reference_equivalence.py
installs it as `torch` in sys.modules, then imports amdegroot/ssd.pytorch's own files (layers/box_utils.py,
layers/modules/multibox_loss.py, layers/functions/detection.py, prior_box.py) unchanged from the
fetched snapshot, so the reference's control flow and arithmetic run as written. The fixture was first
made this way, when no torch could be installed here; it is now made on the real CPU torch (the
generator's default), which moved no equality (docs/evaluation.md).

Semantics kept from torch (CPU, float32): float tensors are float32, `max(dim)` returns (values,
indices) with the FIRST index on ties, `sort` is ascending unless `descending=True`, boolean-mask
indexing returns a copy (so ssd.pytorch's `flt[mask].fill_(0)` in Detect is a no-op there too),
`view` / `expand` / slicing return views. `sort` is stable here; torch's default CPU sort is not
promised to be, which matters only on exactly equal keys (the fixtures count such ties).
"""

import sys
import types

import numpy as np


def _unwrap(value):
    if isinstance(value, Tensor):
        return value.a
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _float(array):
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype == np.float64 else array


class Tensor:
    """A numpy array with the torch methods the references call."""

    __array_priority__ = 1000

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], (list, tuple, np.ndarray)):
            self.a = _float(np.asarray(args[0]))
        elif args and all(isinstance(a, (int, np.integer)) for a in args):
            self.a = np.zeros(args, np.float32)
        elif not args:
            self.a = np.zeros((0,), np.float32)
        else:
            self.a = args[0]

    @staticmethod
    def wrap(array):
        t = Tensor.__new__(Tensor)
        t.a = array if isinstance(array, np.ndarray) else np.asarray(array)   # scalars as 0-d arrays
        return t

    # --- shape -------------------------------------------------------------------------------
    def size(self, dim=None):
        return self.a.shape if dim is None else self.a.shape[dim]

    @property
    def shape(self):
        return self.a.shape

    def dim(self):
        return self.a.ndim

    def numel(self):
        return self.a.size

    def view(self, *shape):
        return Tensor.wrap(self.a.reshape(shape))

    def contiguous(self):
        return self

    def unsqueeze(self, dim):
        return Tensor.wrap(np.expand_dims(self.a, dim))

    def squeeze_(self, dim):
        self.a = np.squeeze(self.a, dim)
        return self

    def expand(self, *shape):
        return Tensor.wrap(np.broadcast_to(self.a, shape))

    def expand_as(self, other):
        return Tensor.wrap(np.broadcast_to(self.a, other.a.shape))

    def transpose(self, d0, d1):
        return Tensor.wrap(np.swapaxes(self.a, d0, d1))

    def resize_as_(self, other):
        self.a = np.zeros_like(other.a)
        return self

    # --- values ------------------------------------------------------------------------------
    @property
    def data(self):
        return self

    def clone(self):
        return Tensor.wrap(self.a.copy())

    def long(self):
        return Tensor.wrap(self.a.astype(np.int64))

    def float(self):
        return Tensor.wrap(self.a.astype(np.float32))

    def item(self):
        return self.a.item()

    def new(self, *size):
        return Tensor.wrap(np.zeros(size, self.a.dtype))

    def zero_(self):
        self.a[...] = 0
        return self

    def fill_(self, value):
        self.a[...] = value
        return self

    def index_fill_(self, dim, index, value):
        assert dim == 0
        self.a[_unwrap(index)] = value
        return self

    def clamp_(self, min=None, max=None):
        self.a[...] = np.clip(self.a, min, max)
        return self

    def gather(self, dim, index):
        return Tensor.wrap(np.take_along_axis(self.a, _unwrap(index), axis=dim))

    def max(self, dim=None, keepdim=False):
        if dim is None:
            return Tensor.wrap(self.a.max())
        indices = np.argmax(self.a, axis=dim)               # first index on ties
        values = np.take_along_axis(self.a, np.expand_dims(indices, dim), axis=dim)
        if not keepdim:
            values = np.squeeze(values, dim)
        else:
            indices = np.expand_dims(indices, dim)
        return Tensor.wrap(values), Tensor.wrap(indices.astype(np.int64))

    def sum(self, dim=None, keepdim=False):
        array = self.a.astype(np.int64) if self.a.dtype == bool else self.a
        if dim is None:
            return Tensor.wrap(array.sum())
        return Tensor.wrap(array.sum(axis=dim, keepdims=keepdim))

    def sort(self, dim=-1, descending=False):
        keys = -self.a if descending else self.a
        if self.a.dtype == bool:
            keys = -self.a.astype(np.int64) if descending else self.a.astype(np.int64)
        indices = np.argsort(keys, axis=dim, kind="stable")
        return Tensor.wrap(np.take_along_axis(self.a, indices, axis=dim)), Tensor.wrap(indices.astype(np.int64))

    def gt(self, other):
        return self > other

    def le(self, other):
        return self <= other

    # --- indexing ----------------------------------------------------------------------------
    def _index(self, key):
        key = _unwrap(key)
        if isinstance(key, np.ndarray) and key.dtype == bool and key.shape != self.a.shape[:key.ndim]:
            # Old torch let a [B, A] mask index a [B*A, 1] tensor (ssd.pytorch's loss_c[pos] = 0).
            return key.reshape(self.a.shape[:1] if key.size == self.a.shape[0] else self.a.shape)
        if isinstance(key, np.ndarray) and key.ndim == 0 and key.dtype != bool:
            return int(key)
        return key

    def __getitem__(self, key):
        return Tensor.wrap(self.a[self._index(key)])

    def __setitem__(self, key, value):
        self.a[self._index(key)] = _unwrap(value)

    def __len__(self):
        return len(self.a)

    def __index__(self):
        return int(self.a)

    def __int__(self):
        return int(self.a)

    def __float__(self):
        return float(self.a)

    def __bool__(self):
        return bool(self.a)

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)

    def __repr__(self):
        return f"Tensor({self.a!r})"


def _binary(name, op, in_place=False):
    def method(self, other):
        result = op(self.a, _unwrap(other))
        if self.a.dtype == bool and np.asarray(_unwrap(other)).dtype == bool and name in ("add",):
            result = self.a.astype(np.uint8) + np.asarray(_unwrap(other)).astype(np.uint8)
        if in_place:
            self.a[...] = result
            return self
        return Tensor.wrap(_float(result) if np.asarray(result).dtype == np.float64 and
                           self.a.dtype == np.float32 else result)
    return method


for _name, _op in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
                   "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                   "eq": np.equal, "ne": np.not_equal}.items():
    setattr(Tensor, f"__{_name}__", _binary(_name, _op))
for _name, _op in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide}.items():
    setattr(Tensor, f"__i{_name}__", _binary(_name, _op, in_place=True))
Tensor.__radd__ = _binary("add", lambda a, b: b + a)
Tensor.__rsub__ = _binary("sub", lambda a, b: b - a)
Tensor.__rmul__ = _binary("mul", lambda a, b: b * a)
Tensor.__rtruediv__ = _binary("truediv", lambda a, b: b / a)
Tensor.__neg__ = lambda self: Tensor.wrap(-self.a)


# --- the torch module functions ----------------------------------------------------------------
def cat(tensors, dim=0):
    return Tensor.wrap(np.concatenate([_unwrap(t) for t in tensors], axis=dim))


def _elementwise_or_reduce(op):
    def fn(a, b=None, *args, **kwargs):
        if b is None or isinstance(b, int):
            raise NotImplementedError("only the elementwise form is used by the references")
        return Tensor.wrap(op(_unwrap(a), _unwrap(b)))
    return fn


def clamp(x, min=None, max=None):
    return Tensor.wrap(np.clip(_unwrap(x), min, max))


def index_select(x, dim, index, out=None):
    result = np.take(_unwrap(x), _unwrap(index), axis=dim)
    if out is not None:
        out.a = result
        return out
    return Tensor.wrap(result)


def zeros(*shape):
    return Tensor.wrap(np.zeros(shape, np.float32))


def LongTensor(*shape):
    return Tensor.wrap(np.zeros(shape, np.int64))


def _sum(x, dim=None, keepdim=False):
    return Tensor.wrap(x).sum(dim, keepdim) if not isinstance(x, Tensor) else x.sum(dim, keepdim)


def _smooth_l1_loss(x, y, size_average=True, reduction=None):
    diff = np.abs(_unwrap(x) - _unwrap(y))
    loss = np.where(diff < 1.0, 0.5 * diff * diff, diff - 0.5)
    return Tensor.wrap(loss.sum() if size_average is False else loss.mean())


def _cross_entropy(logits, targets, size_average=True, reduction=None):
    logits, targets = _unwrap(logits), _unwrap(targets)
    top = logits.max(axis=1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    loss = -np.take_along_axis(log_softmax, targets[:, None], axis=1)[:, 0]
    return Tensor.wrap(loss.sum() if size_average is False else loss.mean())


def install():
    """Puts this stand-in in sys.modules as torch, torch.nn, torch.nn.functional, torch.autograd."""
    torch = types.ModuleType("torch")
    torch.Tensor, torch.LongTensor, torch.zeros = Tensor, LongTensor, zeros
    torch.cat, torch.clamp, torch.index_select = cat, clamp, index_select
    torch.min = _elementwise_or_reduce(np.minimum)
    torch.max = _elementwise_or_reduce(np.maximum)
    torch.log = lambda x: Tensor.wrap(np.log(_unwrap(x)))
    torch.exp = lambda x: Tensor.wrap(np.exp(_unwrap(x)))
    torch.mul = lambda a, b: Tensor.wrap(_unwrap(a) * _unwrap(b))
    torch.sum = _sum
    nn = types.ModuleType("torch.nn")
    nn.Module = type("Module", (object,), {"__init__": lambda self, *a, **k: None,
                                           "__call__": lambda self, *a, **k: self.forward(*a, **k)})
    nn.Parameter = lambda x: x
    functional = types.ModuleType("torch.nn.functional")
    functional.smooth_l1_loss, functional.cross_entropy = _smooth_l1_loss, _cross_entropy
    init = types.ModuleType("torch.nn.init")
    autograd = types.ModuleType("torch.autograd")
    autograd.Function = type("Function", (object,), {})
    autograd.Variable = lambda x, requires_grad=False, volatile=False: x
    torch.nn, nn.functional, nn.init, torch.autograd = nn, functional, init, autograd
    sys.modules.update({"torch": torch, "torch.nn": nn, "torch.nn.functional": functional,
                        "torch.nn.init": init, "torch.autograd": autograd})
    return torch
