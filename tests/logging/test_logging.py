"""setup_logging handlers and files; MetricLogger progress lines, ETA and the JSON-lines metrics file."""

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dinov2.logging import MetricLogger, SmoothedValue, helpers, setup_logging
from dinov2.logging import _log_file_for_rank as log_file_for_rank


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    """setup_logging changes process-wide loggers; put them back so other tests see the defaults."""
    saved = {}
    for name in ("dinov2", "py.warnings"):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logging.captureWarnings(False)
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


@pytest.fixture
def records(restore_loggers: None) -> Iterator[list[logging.LogRecord]]:
    """Records of the "dinov2" logger (which does not propagate once setup_logging ran)."""
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append
    logger = logging.getLogger("dinov2")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield captured
    logger.removeHandler(handler)


def test_setup_logging_is_idempotent_and_writes_rank_file(tmp_path: Path, restore_loggers: None) -> None:
    logger = setup_logging(tmp_path)
    ours = [h for h in logger.handlers if getattr(h, "_dinov2_handler_key", None)]  # not pytest's capture handlers
    assert len(ours) == 2, logger.handlers  # console (main process) + file
    count = len(logger.handlers)
    setup_logging(tmp_path)
    assert len(logger.handlers) == count
    logger.info("hello from the test")
    text = (tmp_path / "logs" / "log.txt").read_text()
    assert "hello from the test" in text and text.startswith("I")
    assert not logger.propagate


def test_a_new_output_replaces_the_previous_log_file(tmp_path: Path, restore_loggers: None) -> None:
    logger = setup_logging(tmp_path / "first")
    count = len(logger.handlers)
    setup_logging(tmp_path / "second")
    assert len(logger.handlers) == count
    logger.info("only in the second run's log")
    assert "only in the second run" in (tmp_path / "second" / "logs" / "log.txt").read_text()
    assert "only in the second run" not in (tmp_path / "first" / "logs" / "log.txt").read_text()


def test_log_file_names() -> None:
    assert log_file_for_rank("out", 0) == Path("out/logs/log.txt")
    assert log_file_for_rank("out", 3) == Path("out/logs/log.txt.rank3")
    assert log_file_for_rank("run.log", 0) == Path("run.log")
    assert log_file_for_rank("run.log", 2) == Path("run.log.rank2")


def test_warnings_are_captured(tmp_path: Path, restore_loggers: None) -> None:
    import warnings

    setup_logging(tmp_path)
    warnings.warn("a captured warning", UserWarning, stacklevel=1)
    assert "a captured warning" in (tmp_path / "logs" / "log.txt").read_text()


def test_smoothed_value_statistics() -> None:
    meter = SmoothedValue(window_size=3)
    for value in (1.0, 5.0, 2.0, 4.0):
        meter.update(value)
    assert meter.median == 4.0 and meter.avg == pytest.approx(11 / 3) and meter.max == 5.0
    assert meter.value == 4.0 and meter.global_avg == 3.0
    assert str(meter) == "4.0000 (3.0000)"
    meter.synchronize_between_processes()  # no process group: unchanged
    assert (meter.count, meter.total) == (4, 12.0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_log_every_eta_and_json_lines(
    tmp_path: Path, records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(helpers.time, "time", clock.time)
    output = tmp_path / "training_metrics.json"
    metric_logger = MetricLogger(delimiter="  ", output_file=output)
    seen = []
    for i, item in enumerate(metric_logger.log_every(iter(range(1000)), 3, "Training", n_iterations=100)):
        clock.now += 60.0  # one minute per iteration
        metric_logger.update(loss=torch.tensor(float(i)), lr=0.5)
        seen.append(item)
        if i == 7:  # the generator logs iteration 6 when asked for item 7
            break
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [0, 3, 6]
    assert lines[1]["loss"] == 1.0 and lines[1]["lr"] == 0.5  # lower median of the window [0, 1, 2, 3]
    assert lines[1]["iter_time"] == 60.0 and lines[1]["data_time"] == 0.0
    first = records[0].getMessage()
    assert first.startswith("Training  [  0/100]  eta: 1:39:00  loss: 0.0000 (0.0000)  lr: 0.5000 (0.5000)")
    assert "eta: 1:36:00" in records[1].getMessage()  # 96 iterations left after iteration 3
    assert "eta: 1:33:00" in records[2].getMessage()
    assert seen == list(range(8))


def test_log_every_stops_at_n_iterations_and_resumes(tmp_path: Path, records: list[logging.LogRecord]) -> None:
    output = tmp_path / "metrics.json"
    metric_logger = MetricLogger(output_file=output)
    assert list(metric_logger.log_every(range(50), 2, n_iterations=6)) == list(range(6))
    lines = [json.loads(line)["iteration"] for line in output.read_text().splitlines()]
    assert lines == [0, 2, 4, 5]  # every print_freq and the last one
    # Resume at iteration 4 (the checkpoint): lines of iterations >= 4 from the interrupted run are replaced.
    resumed = MetricLogger(output_file=output)
    assert list(resumed.log_every(range(50), 2, n_iterations=8, start_iteration=4)) == list(range(4))
    lines = [json.loads(line)["iteration"] for line in output.read_text().splitlines()]
    assert lines == [0, 2, 4, 6, 7]
    assert any("Total time" in record.getMessage() for record in records)


def test_metric_logger_rejects_bad_values() -> None:
    metric_logger = MetricLogger()
    with pytest.raises(ValueError, match="shape"):
        metric_logger.update(loss=torch.ones(2))
    with pytest.raises(TypeError, match="'lr'"):
        metric_logger.update(lr="0.1")
    with pytest.raises(ValueError, match="print_freq"):
        list(metric_logger.log_every(range(3), 0))
    with pytest.raises(ValueError, match="n_iterations"):
        list(metric_logger.log_every(iter(range(3)), 1))
    metric_logger.update(loss=1)
    assert metric_logger.loss.value == 1.0 and "loss: 1.0000" in str(metric_logger)
