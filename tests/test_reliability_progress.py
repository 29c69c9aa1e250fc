"""Progress lines (issue 11, item 9): the training ETA is smoothed over a window, evaluation shows a
rate and an ETA, and the record count behind the ETA comes from the TFRecord headers."""

import pytest

from dataset import reader, tfrecord
from engine import evaluation, training


def test_training_rate_and_eta_are_averaged_over_the_last_ten_calls():
    progress = training.ProgressLogger(max_steps=100, global_batch=8, window=10)
    assert progress.rate(0, 0.0) is None
    for step in range(1, 21):           # 20 steps of 1 s each: 8 images/s
        rate = progress.rate(step, float(step))
    assert rate == pytest.approx(8.0)
    # Step 21 takes 11 s (an evaluation ran): the window holds steps 11..21, 80 images in 31 - 11 = 20 s.
    rate = progress.rate(21, 31.0)
    assert rate == pytest.approx(4.0)              # the old per-call rate was 8 / 11 = 0.73 images/s
    assert progress.eta_seconds(21, rate) == pytest.approx(79 * 8 / 4.0)   # 158 s (old: 869 s)
    for step in range(22, 32):          # ten normal steps later the slow one has left the window
        rate = progress.rate(step, 31.0 + step - 21)
    assert rate == pytest.approx(8.0)
    assert training.format_duration(3725.4) == "1:02:05"


def test_evaluation_progress_line_has_rate_and_eta():
    assert evaluation.progress_line(40, 80, 5.0) == "evaluated 40/80 images, 8.0 images/s, ETA 0:00:05"
    assert evaluation.progress_line(10, None, 4.0) == "evaluated 10 images, 2.5 images/s"


def test_count_records_reads_headers_only_and_names_a_truncated_file(tmp_path):
    path = str(tmp_path / "train-00000-of-00001")
    tfrecord.write_shard(path, [b"a" * 10, b"", b"b" * 1000])
    assert reader.count_records(path) == 3
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(ValueError, match="train-00000-of-00001 is corrupted: a record runs past the end"):
        reader.count_records(path)


def test_sgd_from_scratch_says_it_diverges_and_prints_the_command_that_works(tmp_path, caplog):
    import logging
    from engine.train_config import FROM_SCRATCH_COMMAND
    with caplog.at_level(logging.WARNING):
        assert training.init_backbone(None, str(tmp_path / "no_backbone"), False, "sgd") == 0
    text = caplog.text
    assert "SGD from scratch diverges after the warm-up" in text and FROM_SCRATCH_COMMAND in text
    assert "--optimizer adam" in FROM_SCRATCH_COMMAND      # README's sample recipe
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        training.init_backbone(None, str(tmp_path / "no_backbone"), False, "adam")
    assert "diverges" not in caplog.text and "no pretrained backbone" in caplog.text
