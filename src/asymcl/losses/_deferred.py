"""Value checks (NaN/inf input, index ranges) that do not stall an accelerator.

Why: ``bool(torch.isfinite(x).all())`` copies a flag to the host, and on CUDA a device-to-host
copy waits for every kernel queued before it. Done in the loss, that is once per training step:
the host stops queueing work until the GPU has caught up with the whole forward pass, then the
GPU idles while the host queues the backward. The check itself is a tiny kernel; only the wait
costs.

So on a deferring device (:func:`defers`: CUDA) a check computes its flag and count on the device,
starts a non-blocking copy of them into pinned host memory, records a CUDA event and returns. The
error is raised by a later call of the loss (the first one after the event has completed, normally
the next call), or at once by :func:`raise_pending_input_errors` (which waits). Meanwhile the loss
computed from NaN/inf input is itself NaN (such input propagates through the normalisation and the
log-sum-exp), so no wrong finite number is ever returned without an error following. On CPU (and
any other device) the check is immediate, exactly as before: there the flag is already on the host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Device types whose checks are deferred. A set so that tests can force the deferred path on CPU.
DEFERRING_DEVICE_TYPES = {"cuda"}
# More pending checks than this (no loss call in between has found them complete): wait for them
# all once, so that the list stays bounded.
_MAX_PENDING = 64

_lock = threading.Lock()
_pending: list[_Pending] = []


@dataclass
class _Pending:
    host_count: torch.Tensor  # int64 scalar on the host (pinned for CUDA), filled asynchronously
    event: torch.cuda.Event | None  # None when host_count is already valid
    message: Callable[[int], str]  # the error text for a count > 0

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


def defers(device: torch.device) -> bool:
    """Whether value checks on ``device`` are deferred (see the module docstring)."""
    return device.type in DEFERRING_DEVICE_TYPES


def check_count(count: torch.Tensor, message: Callable[[int], str]) -> None:
    """Raise ``ValueError(message(n))`` where the 0-dim integer tensor ``count`` is n > 0.

    Immediate on a non-deferring device. On a deferring one: queued, raised by a later call of
    :func:`raise_ready` or by :func:`raise_pending_input_errors`.
    """
    if not defers(count.device):
        n = int(count)
        if n:
            raise ValueError(message(n))
        return
    count = count.to(torch.int64)
    if count.device.type == "cuda":
        host = torch.empty((), dtype=torch.int64, pin_memory=True)
        host.copy_(count, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(count.device))
    else:  # a forced deferral on CPU (tests): the value is already there
        host, event = count.clone(), None
    with _lock:
        _pending.append(_Pending(host, event, message))
        too_many = len(_pending) > _MAX_PENDING
    if too_many:
        _raise(wait=True)


def raise_ready() -> None:
    """Raise the first failed check among the deferred ones whose result has arrived; never waits."""
    _raise(wait=False)


def raise_pending_input_errors() -> None:
    """Wait for every deferred input check of the loss and raise the first failure, if any.

    On CUDA the loss reports NaN/inf input one call late (the check does not stall the GPU); call
    this where an error must surface at a known point, e.g. after the last training step of an
    epoch or in a test. On CPU every check is immediate and this returns at once.
    """
    _raise(wait=True)


def _raise(*, wait: bool) -> None:
    if not _pending:  # unlocked read: a list's truth value is atomic, a miss is seen next call
        return
    with _lock:
        done = []
        for item in _pending:
            if wait:
                item.wait()
            elif not item.ready():
                break  # later ones were queued after it on the same stream
            done.append(item)
        del _pending[: len(done)]
    for item in done:
        n = int(item.host_count)
        if n:
            with _lock:  # one error reported: the others describe the same run, drop them
                _pending.clear()
            raise ValueError(item.message(n) + _LATE)


_LATE = (
    " [detected on the accelerator after the call that received it returned; that call's loss was NaN. "
    "On CUDA the input check does not stall the device: it raises at a later call of the loss or at "
    "asymcl.losses.raise_pending_input_errors()]"
)
