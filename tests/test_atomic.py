"""dataset/atomic.staged_folder, the one writer of output folders, and each of its four users (the VOC and
COCO converters, the SavedModel and TFLite exports): the swap, an exception, the leftovers of a killed
run (`.tmp-` and `.old-` siblings, also with only `.old-` left), and the refusal of a folder not theirs.

The kill between replace_folder's two renames itself is simulated in tests/test_reliability_outputs.py;
here its aftermath is made by hand: the output renamed to `.<name>.old-<x>`, a half-filled staging
folder `.<name>.tmp-<x>` beside it.
"""

import os

import pytest
import tensorflow as tf

from conftest import REPO_ROOT
from dataset import atomic, coco_convert, convert
from engine import serving, tflite_export
from model import presets

CLASS_NAMES = ["cat"]


def _files(folder):
    """{file name: text} of a folder holding small text files."""
    return {name: (folder / name).read_text() for name in sorted(os.listdir(folder))}


def _siblings(tmp_path, keep="out"):
    return sorted(n for n in os.listdir(tmp_path) if n != keep)


def _old_folder(tmp_path, files):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    return out


def _write(stage, files):
    for name, text in files.items():
        with open(os.path.join(stage, name), "w") as f:
            f.write(text)


def test_a_finished_stage_replaces_the_folder_as_a_whole(tmp_path):
    out = _old_folder(tmp_path, {"a.txt": "old a", "stale.txt": "old"})
    with atomic.staged_folder(str(out)) as stage:
        assert os.path.dirname(stage) == str(tmp_path) and os.path.basename(stage).startswith(".out.tmp-")
        assert os.listdir(stage) == []
        _write(stage, {"a.txt": "new a", "b.txt": "new b"})
    assert _files(out) == {"a.txt": "new a", "b.txt": "new b"}    # stale.txt went with the old folder
    assert _siblings(tmp_path) == []


def test_a_new_path_and_its_parents_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic.staged_folder(str(out)) as stage:
        _write(stage, {"x.txt": "x"})
    assert _files(out) == {"x.txt": "x"} and os.listdir(tmp_path / "a" / "b") == ["out"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_removes_the_stage_and_leaves_the_old_folder(tmp_path, error):
    out = _old_folder(tmp_path, {"a.txt": "old a"})
    with pytest.raises(error):
        with atomic.staged_folder(str(out)) as stage:
            _write(stage, {"a.txt": "half"})
            raise error("killed while filling")
    assert _files(out) == {"a.txt": "old a"} and _siblings(tmp_path) == []
    with pytest.raises(error):
        with atomic.staged_folder(str(tmp_path / "new")):
            raise error("killed while filling")
    assert os.listdir(tmp_path) == ["out"]   # no half-made new folder either


def _leave_a_killed_run(tmp_path, keep_output):
    """What kills leave beside out/: a half-filled stage; the old output moved aside (killed between the
    two renames) when not `keep_output`, else another `.old-` that a kill after the swap left behind."""
    half = tmp_path / ".out.tmp-k1ll"
    half.mkdir()
    (half / "a.txt").write_text("half")
    old = tmp_path / ".out.old-k1ll"
    if keep_output:
        old.mkdir()
        (old / "a.txt").write_text("older")
    else:
        os.replace(tmp_path / "out", old)


@pytest.mark.parametrize("keep_output", [True, False], ids=["output_and_leftovers", "only_old_left"])
def test_leftovers_of_a_killed_run_are_recovered_first(tmp_path, keep_output):
    _old_folder(tmp_path, {"a.txt": "old a"})
    _leave_a_killed_run(tmp_path, keep_output)
    # The write is killed again, this time while filling: the output it finds is the one it keeps.
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged_folder(str(tmp_path / "out")) as stage:
            assert _siblings(tmp_path) == [os.path.basename(stage)]   # leftovers gone before filling
            raise KeyboardInterrupt
    assert _files(tmp_path / "out") == {"a.txt": "old a"} and _siblings(tmp_path) == []
    _leave_a_killed_run(tmp_path, keep_output)
    with atomic.staged_folder(str(tmp_path / "out")) as stage:
        _write(stage, {"a.txt": "new a"})
    assert _files(tmp_path / "out") == {"a.txt": "new a"} and _siblings(tmp_path) == []


def test_a_folder_that_is_not_ours_or_a_file_is_refused_before_anything_is_written(tmp_path):
    out = _old_folder(tmp_path, {"notes.txt": "keep me"})
    refuse = atomic.must_hold_one_of(["model.bin", "model.txt"], "a model export")
    with pytest.raises(atomic.NotReplaceableError,
                       match=r"/out is not a model export \(it holds none of model.bin, model.txt\); it would be "
                             "replaced as a whole, so it is left alone"):
        with atomic.staged_folder(str(out), refuse):
            raise AssertionError("the body must not run")
    assert _files(out) == {"notes.txt": "keep me"} and _siblings(tmp_path) == []
    (out / "model.txt").write_text("an earlier export")
    with atomic.staged_folder(str(out), refuse) as stage:
        _write(stage, {"model.txt": "this export"})
    assert _files(out) == {"model.txt": "this export"}
    a_file = tmp_path / "file"
    a_file.write_text("keep me too")
    with pytest.raises(FileExistsError, match=r"/file is a file, not a folder"):   # with or without a rule
        with atomic.staged_folder(str(a_file)):
            raise AssertionError("the body must not run")
    assert a_file.read_text() == "keep me too" and _siblings(tmp_path, keep="out") == ["file"]


# --- each writer of an output folder, through staged_folder ---------------------------------------

class _TinyModule(tf.Module):
    """A stand-in for serving.DetectionModule: the export writes whatever module it is given, and its
    config beside it."""

    model = anchors = None   # read by tflite_export.export, whose convert the test stubs

    def __init__(self, config):
        super().__init__()
        self.config = config

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(self, x):
        return {"doubled": 2.0 * x}

    def signatures(self):
        return {serving.SERVING_DEFAULT: self.serve.get_concrete_function()}


def _write_voc(path):
    convert.convert(os.path.join(REPO_ROOT, "dataset"), path, {"train": [convert.Split.parse("sample:val")]},
                    {"train": 1}, num_threads=1)


def _write_coco(path):
    sample = os.path.join(REPO_ROOT, "dataset", "sample")
    split = coco_convert.CocoSplit(os.path.join(sample, "annotations", "instances_val.json"),
                                   os.path.join(sample, "JPEGImages"))
    coco_convert.convert({"val": split}, path, {"val": 1}, num_threads=1)


def _config():
    return presets.get("ssd300_vgg16", len(CLASS_NAMES), width_multiplier=0.125)


def _write_saved_model(path):
    serving.export(_TinyModule(_config()), CLASS_NAMES, path)


def _write_tflite(path):
    # Runs with tflite_export.convert stubbed (the `writer` fixture): the folder writing is under test
    # (dynamic_input: the stand-in bytes are no model that metadata could be added to).
    tflite_export.export(_TinyModule(_config()), CLASS_NAMES, path, formats=("float32",), dynamic_input=True)


# writer, the file that shows an output is its own, a marker name the writer would accept in an earlier
# output (a converter only replaces folders of converter files), the refusal of a foreign folder.
WRITERS = {
    "voc": (_write_voc, "train-00000-of-00001", "stale-00000-of-00001",
            "holds files the converter did not write \\(notes.txt\\)"),
    "coco": (_write_coco, "coco_category_map.json", "stale-00000-of-00001",
             "holds files the converter did not write \\(notes.txt\\)"),
    "saved_model": (_write_saved_model, "saved_model.pb", "stale.txt",
                    "is not a SavedModel export \\(it holds none of saved_model.pb\\)"),
    "tflite": (_write_tflite, "model_float32.tflite", "stale.txt",
               "is not a TFLite export \\(it holds none of model_float32.tflite, model_float16.tflite, "
               "model_int8.tflite\\)"),
}


@pytest.fixture(params=sorted(WRITERS))
def writer(request, monkeypatch):
    # The TFLite graph conversion (a minute of converter per model) is not what is tested: stand-in bytes.
    monkeypatch.setattr(tflite_export, "convert", lambda model, anchors, config, fmt, calibration, input_size: b"TFL3")
    return WRITERS[request.param]


@pytest.mark.parametrize("keep_output", [True, False], ids=["output_and_leftovers", "only_old_left"])
def test_every_writer_recovers_the_leftovers_of_a_killed_run(tmp_path, writer, keep_output, monkeypatch):
    write, own_file, marker, _ = writer
    out = tmp_path / "out"
    write(str(out))
    assert own_file in os.listdir(out) and _siblings(tmp_path) == []
    (out / marker).write_text("the earlier output")
    _leave_a_killed_run(tmp_path, keep_output)
    real_replace = atomic.replace_folder

    def killed_at_the_swap(new_folder, path):
        raise KeyboardInterrupt("killed at the swap")
    monkeypatch.setattr(atomic, "replace_folder", killed_at_the_swap)
    with pytest.raises(KeyboardInterrupt):
        write(str(out))
    # Recovered before writing (only_old_left: the earlier output put back), then left as it was.
    assert (out / marker).read_text() == "the earlier output" and own_file in os.listdir(out)
    assert _siblings(tmp_path) == []
    _leave_a_killed_run(tmp_path, keep_output)
    monkeypatch.setattr(atomic, "replace_folder", real_replace)
    write(str(out))
    assert own_file in os.listdir(out) and marker not in os.listdir(out)   # replaced as a whole
    assert _siblings(tmp_path) == []


def test_every_writer_refuses_a_folder_that_is_not_its_output(tmp_path, writer):
    write, _, _, refusal = writer
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(atomic.NotReplaceableError, match=refusal):
        write(str(precious))
    assert _files(precious) == {"notes.txt": "keep me"} and _siblings(tmp_path, keep="precious") == []
