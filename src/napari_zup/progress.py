"""One progress protocol for every long job (issue #14).

A long job is a generator that yields :class:`Progress` events and returns its result
(``StopIteration.value``); it is cancelled by one ``threading.Event`` passed as ``cancel=``
(:class:`napari_zup.engine.ReconstructionCancelled` is raised). napari's ``thread_worker``
drives such a generator as it is (``yielded`` -> progress bar, ``returned`` -> result); the CLI
prints a progress line from the same events; library code calls :func:`drive`.

    >>> def job(n):
    ...     for i in range(n):
    ...         yield Progress(i + 1, n, "counting", payload=i)
    ...     return "done"
    >>> seen = []
    >>> drive(job(3), lambda ev: seen.append(ev.done))
    'done'
    >>> seen
    [1, 2, 3]

Who yields what: :func:`napari_zup.engine.reconstruct_events` (slices; payload
``(index, slice)`` or ``(index, slice, flow)``), :func:`napari_zup.evaluation.evaluate_events`
(the same while a method reconstructs; returns the scores),
:func:`napari_zup.distributed.iter_reconstruct_to_zarr` (chunks written; returns the store's
path). Functions that take a callback instead (``selection.choose_method(on_progress=...)``)
pass it the same events; :func:`events_from_callback` turns them into a generator.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator

__all__ = ["Progress", "Meter", "drive", "events_from_callback"]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` items (slices, chunks, crops) finished; ``message`` says what is
    running; ``payload`` carries the item itself when the consumer needs it (a finished slice
    to display or write)."""

    done: int
    total: int
    message: str = ""
    payload: Any = None

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty job)."""
        return self.done / self.total if self.total > 0 else 1.0


class Meter:
    """Rate and ETA of a job, for the CLI's progress line and the widgets' status text.

    ``done``: items already finished before this session (a resumed run); they count as done
    but not towards the rate, so the ETA is not flattered by them. The clock starts when the
    meter is made (``clock`` is replaceable for tests).
    """

    def __init__(self, total: int, unit: str = "slices", done: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        self.total = int(total)
        self.unit = unit
        self.done = self.done_at_start = int(done)
        self._clock = clock
        self.start = clock()

    def update(self, event: Progress | int = 1) -> None:
        """Take a :class:`Progress` event (``done`` and ``total`` from it), or count ``n`` more
        items done."""
        if isinstance(event, Progress):
            self.done, self.total = int(event.done), int(event.total)
        else:
            self.done += int(event)

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    @property
    def rate(self) -> float:
        """Items per second finished since the meter started (resumed items excluded)."""
        elapsed = self.elapsed
        new = self.done - self.done_at_start
        return new / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate; nan until one item has finished."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else float("nan")

    def __str__(self) -> str:
        eta = "?" if math.isnan(self.eta) else f"{self.eta:.0f}s"
        resumed = f" ({self.done_at_start} already done)" if self.done_at_start else ""
        return (f"{self.done}/{self.total} {self.unit}{resumed}, {self.rate:.1f} {self.unit}/s, "
                f"elapsed {self.elapsed:.0f}s, ETA {eta}")


def drive(events: Iterator[Progress], on_event: Callable[[Progress], None] | None = None):
    """Run a progress generator to its end, calling ``on_event(event)`` for each event;
    return the generator's return value. The generator is closed on any exit (an exception
    in ``on_event`` included), so its pools and clusters are released."""
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def events_from_callback(function: Callable, *args, callback: str = "on_progress",
                         **kwargs) -> Generator[Progress, None, Any]:
    """Run ``function(*args, **kwargs)`` in a helper thread with the keyword ``callback``
    set to a function that forwards its one argument (a :class:`Progress` event); yield the
    events as they come and finally return ``function``'s result (its exception is re-raised
    here). For the few core functions that take a callback rather than being generators
    (``selection.choose_method``); cancel them with their ``cancel`` event."""
    q: queue.Queue = queue.Queue()
    finished = object()
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args, **{callback: q.put}, **kwargs)
        except BaseException as exc:  # re-raised in the generator's thread
            box["error"] = exc
        finally:
            q.put(finished)

    t = threading.Thread(target=run, daemon=True, name="zup-callback")
    t.start()
    while True:
        item = q.get()
        if item is finished:
            break
        yield item
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")
