"""Every ordinary mistake ends in one line naming the problem and what to do, exit status 2, no
traceback (issue 11, item 8); every script's --help answers without importing TensorFlow (item 9);
every script ends through engine/cli.run, whose one exit-code table they use by name, and which refuses
arguments that no flag takes (issue 22, item 5).

Each case runs the script as a user would (a subprocess); TensorFlow's own start-up log lines
(`I0000 ...`, `W1201 ...`, `WARNING: All log messages ...`) are not ours and are set aside.
"""

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from conftest import REPO_ROOT
from engine import cli


# absl / TensorFlow C++ log lines ("I1201 08:00:00.000 ...", "W0000 ..."), and TF's start-up notice.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)")


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    env.pop("TF_CONFIG", None)
    return env


def _start(script, *args, **env):
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, script), *args], cwd=REPO_ROOT,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_one_error_line(proc, script, pattern):
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    assert len(ours) == 1, ours
    assert ours[0].startswith(f"{script}: error: "), ours
    assert re.search(pattern, ours[0]), ours[0]


PARSE_TIME = [  # refused by absl validators before TensorFlow is imported
    ("train_ssd.py", ["--batch_size", "0"], r"--batch_size must be > 0"),
    ("train_ssd.py", ["--decay_boundaries", "1k"], r"'1k' is not a whole step number \(write 1000, not 1k\)"),
    ("train_ssd.py", ["--decay_boundaries", "10", "--lr_decay_factors", "1"],
     r"--lr_decay_factors needs one more entry than --decay_boundaries"),
    ("train_ssd.py", ["--decay_boundaries", "20,10", "--lr_decay_factors", "1,1,1"], r"must be increasing"),
    ("train_ssd.py", ["--learning_rate", "-1"], r"--learning_rate must be > 0"),
    ("train_ssd.py", ["--momentum", "1.5"], r"--momentum must be in \[0, 1\)"),
    ("train_ssd.py", ["--data_dir", "/nonexistent/records"],
     r"no label_map.pbtxt in --data_dir=/nonexistent/records: convert a dataset first"),
    ("train_ssd.py", ["--require_pretrained", "--checkpoint_path", "/nonexistent/vgg"],
     r"--require_pretrained is set but --checkpoint_path='/nonexistent/vgg' holds no backbone: put"),
    ("train_ssd.py", ["--optimizer", "rmsprop"], r"--optimizer.*sgd.*adam"),
    ("eval_ssd.py", ["--metrics", "voc07,map"], r"--metrics takes a comma-separated subset of voc07"),
    ("eval_ssd.py", ["--batch_size", "0"], r"--batch_size must be > 0"),
    ("detect_ssd.py", ["--input", "x.jpg"], r"--output_dir.*must have a value"),
    ("detect_ssd.py", ["--input", "x.jpg", "--output_dir", "o", "--score_threshold", "2"],
     r"--score_threshold must be in \[0, 1\]"),
    ("export_saved_model.py", [], r"--output_dir.*must have a value"),
    ("convert_voc_sample_tfrecords.py", ["--train_shards", "0"], r"--train_shards"),
    ("convert_voc_sample_tfrecords.py", ["--dataset_directory", "/nonexistent"], r"--dataset_directory is not"),
    ("visualize_augmentation.py", ["--num_samples", "0"], r"--num_samples must be > 0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, pattern", PARSE_TIME,
                         ids=[f"{s}:{' '.join(a)}" for s, a, _ in PARSE_TIME])
def test_flag_that_cannot_work_is_one_line_at_parse_time(tmp_path, script, args, pattern):
    data_dir = tmp_path / "records"
    data_dir.mkdir()
    (data_dir / "label_map.pbtxt").write_text("item { id: 1 name: 'a' }\n")
    defaults = [] if any(a == "--data_dir" for a in args) or script not in (
        "train_ssd.py", "eval_ssd.py", "visualize_augmentation.py") else ["--data_dir", str(data_dir)]
    _assert_one_error_line(_start(script, *defaults, *args), script, pattern)


def _adam_model_dir(path, sample_records):
    """A model_dir as train_ssd.py --optimizer adam leaves it after one checkpoint, written in-process."""
    import tensorflow as tf

    from dataset import label_map
    from engine import checkpoints, training
    from model import presets
    config = presets.get("ssd300_vgg16", 8, width_multiplier=0.125)
    checkpoints.write(str(path), config, label_map.read_label_map(f"{sample_records}/label_map.pbtxt"))
    model, optimizer, checkpoint = training.build_model_and_optimizer(
        tf.distribute.get_strategy(), config, 1e-3, 0.9, "none", "adam")
    tf.train.CheckpointManager(checkpoint, str(path), max_to_keep=1).save(checkpoint_number=1)


@pytest.mark.slow
def test_ordinary_mistakes_found_at_run_time_are_one_line(sample_records, tmp_path):
    tiny = ["--width_multiplier", "0.125", "--batch_size", "2", "--image_summary_steps", "0", "--max_steps", "3",
            "--optimizer", "adam", "--save_checkpoints_steps", "0"]
    no_shards = tmp_path / "no_shards"
    no_shards.mkdir()
    (no_shards / "label_map.pbtxt").write_bytes(open(f"{sample_records}/label_map.pbtxt", "rb").read())
    not_a_map = tmp_path / "not_a_map"
    not_a_map.mkdir()
    (not_a_map / "label_map.pbtxt").write_text("classes: cat, dog\n")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in os.listdir(sample_records):
        data = bytearray(open(os.path.join(sample_records, name), "rb").read())
        if name == "train-00001-of-00004":
            data[5000:5010] = bytes(10)  # inside the first record's JPEG: its CRC no longer matches
        (corrupt / name).write_bytes(bytes(data))
    adam_dir = tmp_path / "adam_run"
    _adam_model_dir(adam_dir, sample_records)
    voc_out = tmp_path / "not_converter_output"
    voc_out.mkdir()
    (voc_out / "thesis.tex").write_text("precious")

    cases = [
        ("train_ssd.py", ["--data_dir", str(no_shards), "--model_dir", str(tmp_path / "m1"), *tiny],
         r"no train shards \(train-\?\?\?\?\?-of-\?\?\?\?\?\) in .*no_shards: convert the dataset into it"),
        ("train_ssd.py", ["--data_dir", str(not_a_map), "--model_dir", str(tmp_path / "m2"), *tiny],
         r"not_a_map/label_map.pbtxt is not a StringIntLabelMap label map"),
        ("train_ssd.py", ["--data_dir", str(corrupt), "--model_dir", str(tmp_path / "m3"), *tiny,
                          "--max_steps", "200"],
         r"corrupt/train-00001-of-00004 is corrupted \(corrupted record at \d+\): reconvert the dataset"),
        ("train_ssd.py", ["--data_dir", sample_records, "--model_dir", str(adam_dir), *tiny, "--optimizer", "sgd"],
         r"adam_run/ckpt-1 holds 142 optimizer slots, this run's optimizer has 71 \(another --optimizer"),
        ("eval_ssd.py", ["--data_dir", sample_records, "--model_dir", str(tmp_path / "empty")],
         r"no checkpoint in --model_dir=.*empty: train one there first"),
        ("export_saved_model.py", ["--model_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "e")],
         r"no checkpoint in --model_dir"),
        ("detect_ssd.py", ["--model_dir", str(adam_dir), "--input", str(tmp_path / "nothing*.jpg"),
                           "--output_dir", str(tmp_path / "d")], r"nothing\*\.jpg' matches no file"),
        ("convert_voc_sample_tfrecords.py", ["--output_directory", str(voc_out)],
         r"not_converter_output holds files the converter did not write \(thesis.tex\)"),
    ]
    started = [(_start(script, *args), script, pattern) for script, args, pattern in cases]  # in parallel
    for proc, script, pattern in started:
        _assert_one_error_line(proc, script, pattern)
    assert (voc_out / "thesis.tex").read_text() == "precious"


SCRIPTS = ["train_ssd.py", "eval_ssd.py", "detect_ssd.py", "export_saved_model.py",
           "convert_voc_sample_tfrecords.py", "convert_yolo_tfrecords.py", "visualize_augmentation.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_importing_tensorflow(tmp_path, script):
    # A `tensorflow` that fails on import, first on the path: --help must never reach it.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('tensorflow imported before the flags were parsed')\n")
    proc = _start(script, "--help", PYTHONPATH=str(tmp_path / "fake"))
    stdout, stderr = proc.communicate(timeout=60)
    assert "imported before the flags were parsed" not in stderr, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "--" in stdout and script.replace(".py", "") in stdout, stdout[:500]


# Every top-level script, each ending through cli.run (the test below checks the list is complete).
ALL_SCRIPTS = ["train_ssd.py", "eval_ssd.py", "detect_ssd.py", "export_saved_model.py", "export_tflite.py",
               "export_onnx.py",
               "stream_ssd.py", "analyze_dataset.py", "list_coco_categories.py",
               "convert_voc_sample_tfrecords.py", "convert_coco_tfrecords.py", "convert_yolo_tfrecords.py",
               "visualize_augmentation.py"]


def test_exit_code_table_is_distinct_and_documented():
    assert (cli.EXIT_OK, cli.EXIT_SKIPPED, cli.EXIT_ERROR, cli.EXIT_PREEMPTED, cli.EXIT_WORKER_LOST) == (
        0, 3, 2, 42, 43)
    codes = [code for code, _ in cli.EXIT_CODES.values()]
    assert len(set(codes)) == len(codes) == 5
    for name, (code, meaning) in cli.EXIT_CODES.items():
        assert getattr(cli, name) == code and meaning
        # The module docstring's table: "    EXIT_SKIPPED     3   finished, but ..."
        assert re.search(rf"^    {name} +{code}   \w", cli.__doc__, re.MULTILINE), name


def test_every_script_ends_through_cli_run_and_uses_the_names():
    scripts = sorted(n for n in os.listdir(REPO_ROOT) if n.endswith(".py"))
    assert scripts == sorted(ALL_SCRIPTS)
    for script in ALL_SCRIPTS:
        with open(os.path.join(REPO_ROOT, script)) as f:
            source = f.read()
        ending = source[source.index('if __name__ == "__main__":'):]
        assert re.search(r"^    cli\.run\(main\)$", ending, re.MULTILINE), script
        # No other way out: absl's app.run, sys.exit, a status by its number, an error printed, or logged
        # and returned from (logging.error stays for a skipped input that is counted, detect_ssd.py).
        for pattern in (r"\bapp\.run\(", r"\bsys\.exit\(", r"\breturn -?\d+\b", r"file=sys\.stderr",
                        r"logging\.error\(.*\n\s+return\b"):
            assert not re.search(pattern, source), (script, pattern)


# In-process: cli.run on a main of our own, with flags of our own (absl's FLAGS are shared by the suite).
if "cli_test_files" not in flags.FLAGS:
    flags.DEFINE_list("cli_test_files", None, "Test-only list flag (tests/test_cli_errors.py).")
    flags.DEFINE_string("cli_test_name", None, "Test-only string flag (tests/test_cli_errors.py).")


def _run_in_process(argv, capsys, positionals=False, result=None, raises=None):
    calls = []

    def main(parsed):
        calls.append(parsed)
        if raises:
            raise raises
        return result
    with pytest.raises(SystemExit) as exited:
        cli.run(main, argv=argv, positionals=positionals)
    return exited.value.code, capsys.readouterr().err, calls


def test_leftover_arguments_are_one_line_naming_them_and_main_never_runs(capsys):
    # What `detect.py --cli_test_files photos/*.jpg` is after the shell expanded the glob.
    argv = ["detect.py", "--cli_test_files", "photos/a.jpg", "photos/b.jpg", "photos/c.jpg", "photos/d.jpg"]
    code, err, calls = _run_in_process(argv, capsys)
    assert code == cli.EXIT_ERROR == 2 and calls == []
    assert err == ("detect.py: error: no flag takes the arguments photos/b.jpg photos/c.jpg photos/d.jpg "
                   "(after --cli_test_files photos/a.jpg): quote a glob so the shell passes it whole "
                   "(--cli_test_files 'photos/*.jpg'), or give the list as "
                   "--cli_test_files photos/a.jpg,photos/b.jpg,photos/c.jpg,...\n")
    code, err, calls = _run_in_process(["x.py", "--cli_test_name=my", "photo.png"], capsys)
    assert code == 2 and calls == [] and err == (
        "x.py: error: no flag takes the argument photo.png (after --cli_test_name my): quote a value with "
        "spaces so the shell passes it as one argument (--cli_test_name 'my photo.png')\n")
    code, err, calls = _run_in_process(["x.py", "stray"] + [f"f{i}.png" for i in range(9)], capsys)
    assert code == 2 and calls == [] and err == (
        "x.py: error: no flag takes the arguments stray f0.png f1.png f2.png f3.png ... (10 in all): quote a "
        "glob or a value with spaces so the shell passes it as one argument\n")


def test_positionals_opt_in_statuses_and_ordinary_errors(capsys):
    code, err, calls = _run_in_process(["serve.py", "worker", "--cli_test_name", "n"], capsys, positionals=True)
    assert code is None and err == "" and calls == [["serve.py", "worker"]]     # None: status 0
    code, err, calls = _run_in_process(["conv.py"], capsys, result=cli.EXIT_SKIPPED)
    assert code == cli.EXIT_SKIPPED and err == "" and calls == [["conv.py"]]
    code, err, _ = _run_in_process(["conv.py"], capsys, raises=FileNotFoundError("a.json: file not found"))
    assert code == 2 and err == "conv.py: error: a.json: file not found\n"
    code, err, calls = _run_in_process(["conv.py", "--cli_test_nam", "x"], capsys)
    assert code == 2 and calls == [] and err.startswith("conv.py: error: ") and err.count("\n") == 1


# A stray argument for each script, with the flags it requires, so only the stray one is wrong.
STRAY = {"detect_ssd.py": ["--output_dir", "out", "--input", "photos/a.jpg", "photos/b.jpg"],
         "export_saved_model.py": ["--output_dir", "out", "extra"],
         "export_tflite.py": ["--output_dir", "out", "extra"],
         "export_onnx.py": ["--output_dir", "out", "extra"],
         "stream_ssd.py": ["--source", "clip.mp4", "extra"]}


@pytest.mark.slow
def test_every_script_refuses_an_argument_no_flag_takes(tmp_path):
    data_dir = tmp_path / "records"
    data_dir.mkdir()
    (data_dir / "label_map.pbtxt").write_text("item { id: 1 name: 'a' }\n")
    started = []
    for script in ALL_SCRIPTS:
        data = ["--data_dir", str(data_dir)] if script in ("train_ssd.py", "eval_ssd.py",
                                                           "visualize_augmentation.py") else []
        started.append((_start(script, *data, *STRAY.get(script, ["extra"])), script))   # in parallel
    for proc, script in started:
        pattern = (r"no flag takes the argument photos/b.jpg \(after --input photos/a.jpg\): quote a glob .*"
                   r"--input 'photos/\*\.jpg'.* --input photos/a.jpg,photos/b.jpg$" if script == "detect_ssd.py"
                   else r"no flag takes the argument extra")
        _assert_one_error_line(proc, script, pattern)
