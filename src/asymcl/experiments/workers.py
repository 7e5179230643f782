"""Running a list of sweep points into one directory, shared by any number of workers.

A *worker* is one ``asymcl sweep`` process (grid or one Optuna trial's seeds); several may run on
one machine or on many that share the sweep directory. What keeps them apart is the run lock of
the training layer (:mod:`asymcl.training.runlock`): the pipeline refuses a run directory that
another process holds with :class:`~asymcl.errors.RunLockedError`, and a worker takes that as
"someone else has this point" rather than as a failure.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymcl.errors import RunLockedError
from asymcl.experiments.runs import METHOD_KEY, is_complete
from asymcl.experiments.sweep_types import Runner, SweepPoint, SweepSpec
from asymcl.training import runlock


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _estimate(
    left: Sequence[SweepPoint], by_method: Mapping[Any, list[float]], durations: list[float]
) -> tuple[float, list[str]]:
    """Seconds still needed for the runs left whose method this invocation has timed, and the
    methods it has not timed yet.

    Each run left costs the typical duration of this invocation's runs of the same method (CE is
    much cheaper than a two-stage run). Typical is the lower median, not the mean: the first run of
    a sweep from a feature cache does a one-time extraction that can take 100 times a run, and the
    mean made the ETA hours too long. A method not timed yet is named rather than guessed: pricing
    it at the runs so far (the probe and CE, which come first) printed "8 min" for an arm of
    two-stage runs that took 45."""
    total = 0.0
    untimed: list[str] = []
    for point in left:
        method = point.overrides.get(METHOD_KEY)
        same = by_method.get(method)
        if same:
            total += statistics.median_low(same)
        elif method is None:  # no method in the grid: one method throughout, priced by every run so far
            total += statistics.median_low(durations)
        elif str(method) not in untimed:
            untimed.append(str(method))
    return total, untimed


def _eta_text(
    left: Sequence[SweepPoint], by_method: Mapping[Any, list[float]], durations: list[float], workers: int
) -> str:
    if not durations:
        return "ETA after the first run"
    seconds, untimed = _estimate(left, by_method, durations)
    if untimed and seconds / workers < 1:
        return f"ETA after a first run of {', '.join(untimed)}"
    text = f"ETA {_format_duration(seconds / workers)}"
    if untimed:
        text += f" + the runs of {', '.join(untimed)} (not timed yet)"
    return text


@dataclass
class SweepResult:
    out_dir: Path
    total: int
    skipped: list[str] = field(default_factory=list)  # already finished before this call
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error
    others: list[str] = field(default_factory=list)  # finished meanwhile by other workers

    @property
    def n_complete(self) -> int:
        return len(self.skipped) + len(self.ran) + len(self.others)

    @property
    def complete(self) -> bool:
        return not self.failed and self.n_complete == self.total


def run_points(
    spec: SweepSpec,
    points: Sequence[SweepPoint],
    out_dir: Path,
    *,
    runner: Runner,
    configs: Mapping[str, dict],
    progress: Callable[[str], None],
    label: str = "sweep",
    poll_seconds: float = 5.0,
) -> SweepResult:
    """Run every point not finished yet, printing ``done/left/ETA`` before each run.

    Several workers (processes or machines) may run the same points into one directory. The run
    lock (training/runlock.py) lets one worker at a time train a run; a point another worker holds
    (RunLockedError) is put aside and this worker goes on with the next free one. After the last
    free point it comes back to the ones put aside and waits for them (polling every
    ``poll_seconds``): each either finishes in its holder, or its holder dies, the kernel drops the
    lock and this worker resumes it from its checkpoints. So no point is trained twice and none is
    left unfinished while one worker is still running.
    """
    result = SweepResult(out_dir, len(points))
    pending = []
    for point in points:
        if is_complete(out_dir / point.name):
            result.skipped.append(point.name)
        else:
            pending.append(point)
    if result.skipped:
        progress(f"[{label}] {len(result.skipped)}/{len(points)} runs already finished; skipping them")
    durations: list[float] = []
    by_method: dict[Any, list[float]] = {}

    def attempt(point: SweepPoint) -> bool:
        """Run ``point`` unless it is finished; False when another worker holds it."""
        run_dir = out_dir / point.name
        if is_complete(run_dir):
            result.others.append(point.name)
            return True
        if runlock.holder(run_dir) is not None:
            # Another worker trains it: come back to it later, without a "running" line that reads
            # as if both trained it (the run lock below still decides when two start at once).
            return False
        # Progress over the whole directory, not this worker's share: what every worker prints agrees.
        left = [p for p in points if not is_complete(out_dir / p.name)]
        elsewhere = [p for p in left if p is not point and runlock.holder(out_dir / p.name) is not None]
        workers = 1 + len(elsewhere)
        eta = _eta_text(left, by_method, durations, workers)
        busy = f", {len(elsewhere)} running in other workers" if elsewhere else ""
        progress(
            f"[{label}] {len(points) - len(left)}/{len(points)} done, {len(left)} left{busy}, {eta}; "
            f"running {point.name}"
        )
        started = time.monotonic()
        try:
            runner(configs[point.name], run_dir)
        except KeyboardInterrupt:
            raise
        except RunLockedError as exc:
            progress(f"[{label}] {point.name}: {exc}".split("; wait")[0] + "; coming back to it later")
            return False
        except Exception as exc:  # one broken run must not lose the rest of the sweep
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            result.failed[point.name] = message
            with open(out_dir / "failures.log", "a") as log:
                log.write(f"=== {point.name} ({_dt.datetime.now().isoformat(timespec='seconds')})\n")
                log.write(traceback.format_exc())
            progress(f"[{label}] run {point.name} failed: {message} (details in {out_dir / 'failures.log'})")
            return True
        durations.append(time.monotonic() - started)
        by_method.setdefault(point.overrides.get(METHOD_KEY), []).append(durations[-1])
        result.ran.append(point.name)
        return True

    def still_held(point: SweepPoint) -> bool:
        run_dir = out_dir / point.name
        if not is_complete(run_dir) and runlock.holder(run_dir) is not None:
            return True  # its worker is alive: look again later, without a line every poll
        return not attempt(point)

    held_elsewhere = [point for point in pending if not attempt(point)]
    announced: list[str] = []
    while held_elsewhere:
        held_elsewhere = [point for point in held_elsewhere if still_held(point)]
        if held_elsewhere:
            names = [point.name for point in held_elsewhere]
            if names != announced:
                progress(
                    f"[{label}] waiting for {len(names)} run(s) that other workers are training "
                    f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); if a worker "
                    "stops, its run is resumed here"
                )
                announced = names
            time.sleep(poll_seconds)
    progress(
        f"[{label}] finished: {result.n_complete}/{len(points)} runs complete"
        + (f" ({len(result.others)} by other workers)" if result.others else "")
        + (f", {len(result.failed)} failed" if result.failed else "")
        + (f" in {_format_duration(sum(durations))}" if durations else "")
    )
    return result
