"""Atomic writes: a reader (or a rerun after a kill) never sees a half-written file or a mixed folder.

Everything written here follows the process umask, as `open()` and `os.makedirs` do (0644 files and
0755 folders under the usual 022): tempfile.mkstemp / mkdtemp create 0600 / 0700 on purpose (they are
private scratch space), which would leave a label map or an exported model unreadable to a server
running as another user once the temporary is renamed into place. So every temporary that becomes an
output is chmod-ed to what a plain create would have given.

`replace_folder` swaps a finished folder into place as a whole: on Linux with one renameat2
RENAME_EXCHANGE (atomic: a reader sees the old folder or the new one, never neither, never a mix);
elsewhere with two renames, where a kill between them leaves the old folder beside the output under a
`.old-` name that `recover_folder` puts back on the next run.

`staged_folder` is the one way an output folder is written (the VOC and COCO converters, the SavedModel
and TFLite exports): recover the leftovers of a killed earlier run, refuse to replace a path that is not
this writer's output, fill a staging folder, swap it in whole; an exception removes the staging folder
and leaves the old output as it was.
"""

import contextlib
import ctypes
import os
import shutil
import tempfile
import threading

from absl import logging

_UMASK_LOCK = threading.Lock()
TEMP_MARKER = ".tmp-"
OLD_MARKER = ".old-"


def current_umask():
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode():
    """Mode a plain open(path, "w") gives a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def folder_mode():
    """Mode os.makedirs gives a new folder: 0o777 minus the umask."""
    return 0o777 & ~current_umask()


def write_atomically(path, text):
    """Write `text` (str, as UTF-8) to `path` via a temporary file in the same folder and os.replace;
    the file gets the umask's mode, not mkstemp's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def make_temp_folder(parent, name):
    """A new empty folder `.<name>.tmp-XXXX` in `parent` with the umask's mode (not mkdtemp's 0700)."""
    os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(dir=parent, prefix=f".{name}{TEMP_MARKER}")
    os.chmod(path, folder_mode())
    return path


def _exchange(a, b):
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def recover_folder(path):
    """Undo what a kill during `replace_folder` or before it left beside `path`: put a `.old-` copy
    back when `path` itself is missing, then delete every `.tmp-` and `.old-` leftover. Returns them."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    leftovers = sorted(os.path.join(parent, n) for n in os.listdir(parent)
                       if n.startswith(f".{name}{TEMP_MARKER}") or n.startswith(f".{name}{OLD_MARKER}"))
    olds = [p for p in leftovers if os.path.basename(p).startswith(f".{name}{OLD_MARKER}")]
    if not os.path.exists(path) and olds:
        os.replace(olds[-1], path)
        leftovers.remove(olds[-1])
        logging.info("put %s back as %s, left by a run killed while swapping", olds[-1], path)
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    return leftovers


def replace_folder(new_folder, path):
    """Put the finished folder `new_folder` (a sibling of `path`) in place of `path`, as a whole."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        os.replace(new_folder, path)
        return
    if _exchange(new_folder, path):
        shutil.rmtree(new_folder)   # it now holds the old set
        return
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(dir=parent, prefix=f".{name}{OLD_MARKER}")
    os.rmdir(old)
    os.replace(path, old)
    os.replace(new_folder, path)
    shutil.rmtree(old)


def must_hold_one_of(names, what):
    """A `why_not_replaceable` for `staged_folder`: a folder holding one of the file `names` is `what`
    (e.g. a SavedModel export, marked by saved_model.pb) and may be replaced; any other is refused."""
    names = list(names)

    def why_not(folder):
        if any(os.path.exists(os.path.join(folder, name)) for name in names):
            return None
        return f"is not {what} (it holds none of {', '.join(names)})"
    return why_not


class NotReplaceableError(FileExistsError):
    """The output path exists and is not an output of the writer that would replace it as a whole."""


@contextlib.contextmanager
def staged_folder(path, why_not_replaceable=None):
    """Write a folder as a whole: `with staged_folder(path, ...) as stage:` fill `stage`, a new empty
    folder beside `path`; on a normal exit `stage` replaces `path` (`replace_folder`).

    First the `.tmp-` / `.old-` leftovers of a killed earlier write of `path` are recovered
    (`recover_folder`: a missing `path` gets its `.old-` copy back), then an existing `path` is checked:
    a file is never replaced, and a folder only when `why_not_replaceable(path)` returns None (a reason,
    e.g. "holds files the converter did not write (notes.txt)", refuses it with NotReplaceableError
    before anything is written; `must_hold_one_of` makes one). Without it any existing folder is replaced.

    On an exception in the body (KeyboardInterrupt included) `stage` is removed and `path` is left as it
    was. Yields the staging folder's path.
    """
    path = os.path.abspath(path)
    for leftover in recover_folder(path):
        logging.info("removed %s, left by an interrupted run", leftover)
    if os.path.exists(path):
        reason = "is a file, not a folder" if not os.path.isdir(path) else (
            why_not_replaceable(path) if why_not_replaceable else None)
        if reason:
            raise NotReplaceableError(f"{path} {reason}; it would be replaced as a whole, so it is left "
                                      "alone: choose another output path")
    parent, name = os.path.split(path)
    stage = make_temp_folder(parent, name)   # the umask's mode, not 0700
    try:
        yield stage
        replace_folder(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
