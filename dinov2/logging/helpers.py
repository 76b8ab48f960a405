"""Training-loop meters: smoothed values, periodic progress lines with ETA, and a JSON-lines metrics file."""

import datetime
import json
import logging
import os
import statistics
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from dinov2 import distributed

__all__ = ["FILE_ONLY", "MetricLogger", "SmoothedValue"]

logger = logging.getLogger("dinov2")

# ``logger.info(..., extra=FILE_ONLY)``: the record goes to the log files but not to the console (configs, model
# summaries, the full meter lines), so the console stays readable.
FILE_ONLY = {"file_only": True}


class SmoothedValue:
    """A value tracked as a median / average over the last ``window_size`` updates and a running global average."""

    def __init__(self, window_size: int = 20, fmt: str | None = None) -> None:
        self.deque: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, num: int = 1) -> None:
        """Adds ``value`` observed ``num`` times (``num`` weighs the global average, e.g. a batch size)."""
        self.deque.append(value)
        self.count += num
        self.total += value * num

    def synchronize_between_processes(self) -> None:
        """Sums ``count`` and ``total`` over ranks so ``global_avg`` covers every rank (the window stays local)."""
        if not distributed.is_enabled():
            return
        device = distributed.get_collective_device()
        counts = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)  # [2]
        distributed.barrier()
        distributed.all_reduce(counts)
        self.count, self.total = int(counts[0].item()), float(counts[1].item())

    @property
    def median(self) -> float:
        # The lower middle value for even windows, as torch.median picks; kept in float64.
        return statistics.median_low(self.deque) if self.deque else float("nan")

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else float("nan")

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else float("nan")

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else float("nan")

    def __str__(self) -> str:
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"meter {name!r} got a tensor of shape {tuple(value.shape)}; pass a scalar")
        value = value.item()
    if not isinstance(value, int | float):
        raise TypeError(f"meter {name!r} got {type(value).__name__}; pass an int, a float or a 1-element tensor")
    return float(value)


def _max_memory_mb() -> float | None:
    if not torch.accelerator.is_available():
        return None
    try:
        return torch.accelerator.max_memory_allocated() / (1024 * 1024)
    except (RuntimeError, NotImplementedError):  # backends without memory statistics
        return None


class MetricLogger:
    """Named :class:`SmoothedValue` meters, logged every few iterations of :meth:`log_every`.

    With ``output_file``, the main process appends one JSON line per logged iteration:
    ``{"iteration": i, "iter_time": s, "data_time": s, <meter>: median, ...}``. On resume
    (``start_iteration > 0``), lines of iterations ``>= start_iteration`` left by the interrupted run are dropped
    first, so the file holds each iteration once; earlier history is kept.
    """

    def __init__(self, delimiter: str = "\t", output_file: str | Path | None = None) -> None:
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.output_file = None if output_file is None else Path(output_file)

    def update(self, **kwargs: Any) -> None:
        """Records one observation per meter; values may be ints, floats or 1-element tensors."""
        for name, value in kwargs.items():
            self.meters[name].update(_as_float(name, value))

    def __getattr__(self, name: str) -> SmoothedValue:
        meters = self.__dict__.get("meters", {})
        if name in meters:
            return meters[name]
        raise AttributeError(f"{type(self).__name__} has no meter or attribute {name!r}")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def _drop_lines_from(self, start_iteration: int) -> None:
        """Removes JSON lines of iterations >= ``start_iteration`` (written after the checkpoint we resume from)."""
        if self.output_file is None or not self.output_file.is_file():
            return
        kept = []
        for line in self.output_file.read_text().splitlines():
            try:
                if int(json.loads(line)["iteration"]) >= start_iteration:
                    continue
            except (ValueError, KeyError, TypeError):
                pass  # not ours: keep it untouched
            kept.append(line)
        tmp = self.output_file.with_name(f".{self.output_file.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.output_file)

    def dump_in_output_file(self, iteration: int, iter_time: float, data_time: float) -> None:
        """Appends one JSON line (main process only)."""
        if self.output_file is None or not distributed.is_main_process():
            return
        record = {"iteration": iteration, "iter_time": iter_time, "data_time": data_time}
        record.update({name: meter.median for name, meter in self.meters.items()})
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        with self.output_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_record(self, iteration: int, **values: float) -> None:
        """Appends ``{"iteration": iteration, **values}`` as one JSON line (main process only), for measurements
        made outside the meters' rhythm (e.g. an evaluation at a teacher export)."""
        if self.output_file is None or not distributed.is_main_process():
            return
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        with self.output_file.open("a") as handle:
            handle.write(json.dumps({"iteration": iteration, **values}) + "\n")

    def log_every(
        self,
        iterable: Iterable[Any],
        print_freq: int,
        header: str | None = None,
        n_iterations: int | None = None,
        start_iteration: int = 0,
        *,
        console_meters: Sequence[str] | None = None,
        samples_per_iteration: int | None = None,
    ) -> Iterator[Any]:
        """Yields from ``iterable`` (at most ``n_iterations - start_iteration`` items; iterations are numbered from
        ``start_iteration``) and logs ``header [i/n] eta: H:MM:SS <meters> time: s data: s`` every ``print_freq``
        iterations and at the last one. Iteration time covers the loop body, data time the wait for the item.

        With ``console_meters`` that full line goes to the log file only, and the console gets a short one: those
        meters, the speed (``samples_per_iteration`` per iteration time, as samples/s) and the ETA."""
        if print_freq < 1:
            raise ValueError(f"print_freq must be >= 1, got {print_freq}")
        if n_iterations is None:
            try:
                n_iterations = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError("iterable has no len(); pass n_iterations") from None
        header = header or ""
        iter_time, data_time = SmoothedValue(fmt="{avg:.6f}"), SmoothedValue(fmt="{avg:.6f}")
        if start_iteration > 0 and distributed.is_main_process():
            self._drop_lines_from(start_iteration)

        i = start_iteration
        if i >= n_iterations:
            return
        start_time = end = time.time()
        for item in iterable:
            data_time.update(time.time() - end)
            yield item
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == n_iterations - 1:
                self._log_progress(header, i, n_iterations, iter_time, data_time, console_meters, samples_per_iteration)
            i += 1
            end = time.time()
            if i >= n_iterations:
                break
        total = time.time() - start_time
        done = i - start_iteration
        logger.info(
            "%s Total time: %s (%.6f s / it)",
            header,
            datetime.timedelta(seconds=int(total)),
            total / max(done, 1),
        )

    def _log_progress(
        self,
        header: str,
        i: int,
        n_iterations: int,
        iter_time: SmoothedValue,
        data_time: SmoothedValue,
        console_meters: Sequence[str] | None,
        samples_per_iteration: int | None,
    ) -> None:
        """The progress line of iteration ``i`` (see :meth:`log_every`), and its row in the metrics file."""
        self.dump_in_output_file(i, iter_time.avg, data_time.avg)
        eta = datetime.timedelta(seconds=int(iter_time.global_avg * (n_iterations - i - 1)))
        parts = [header, f"[{i:{len(str(n_iterations))}d}/{n_iterations}]", f"eta: {eta}", str(self)]
        parts += [f"time: {iter_time}", f"data: {data_time}"]
        memory = _max_memory_mb()
        if memory is not None:
            parts.append(f"max mem: {memory:.0f}")
        full_line = self.delimiter.join(part for part in parts if part)
        if console_meters is None:
            logger.info(full_line)
            return
        logger.info(full_line, extra=FILE_ONLY)
        logger.info(self._console_line(header, i, n_iterations, eta, iter_time, console_meters, samples_per_iteration))

    def _console_line(
        self,
        header: str,
        i: int,
        n_iterations: int,
        eta: datetime.timedelta,
        iter_time: SmoothedValue,
        names: Sequence[str],
        samples_per_iteration: int | None,
    ) -> str:
        parts = [f"{header} {i + 1}/{n_iterations}".strip()]
        parts += [f"{name} {self.meters[name].median:.4g}" for name in names if name in self.meters]
        if samples_per_iteration and iter_time.avg > 0:
            parts.append(f"{samples_per_iteration / iter_time.avg:.1f} img/s")
        parts.append(f"eta {eta}")
        return " | ".join(parts)
