"""An Optuna study that many workers share through one database: nothing lost, nothing run twice.

Used by :func:`asymcl.experiments.study.run_study`. What each piece is for:

- **Heartbeats** (``RDBStorage(heartbeat_interval, grace_period)``): a worker records a heartbeat
  for its running trial every ``heartbeat`` seconds; a trial without one for ``4 * heartbeat``
  seconds (its worker was killed, or its machine lost) is marked FAIL by whichever worker looks
  next, and ``RetryHeartbeatStaleTrialCallback`` enqueues a new trial with the same parameters.
  That trial names the same run folders, so it resumes them from their checkpoints (the run lock
  makes sure the dead worker is really gone: the kernel released its lock).
- **Duplicates**: trials keep 3 significant digits, so two proposals can name the same run
  folders. Only the lowest-numbered live trial of a point is evaluated; the others end as FAIL
  with the user attribute ``duplicate_of`` and train nothing. FAIL rather than PRUNED because
  TPE ignores FAIL trials, while a PRUNED one would count as a bad observation at a point whose
  real value is known (and as one of its random start-up trials). Hence the count users see:
  COMPLETE trials = distinct points evaluated, and each has one run folder per seed.
- **The budget** ``n_trials`` counts COMPLETE trials over all workers. A worker starts a new
  trial only while COMPLETE + RUNNING + WAITING trials are fewer than ``n_trials``; otherwise it
  waits (polling) until the running ones finish, or picks up the retry of one that died. That
  count and the trial's creation are two database calls, so two workers can both see room for
  one more; hence the trial itself checks again before it trains (:func:`over_budget`): it goes
  ahead only if the COMPLETE trials plus the live trials that precede it (retries of dead trials
  first, then lower numbers) leave room. Otherwise it ends as FAIL with the user attribute
  ``over_budget`` and trains nothing. Trial numbers are handed out by the database, so the
  workers agree on that order without a lock. Left open: Optuna marks a dead trial FAIL and then
  enqueues its retry in two calls; a fresh trial created between them does not see the retry.
- **Database briefly unreachable**: every database call of the worker loop is retried with
  exponential backoff (1 s, 2 s, ... up to 60 s between tries) and a progress line, for up to
  ``db_wait`` seconds; the heartbeat thread keeps beating through errors instead of dying; a
  result that could not be told is told when the database is back. A trial whose heartbeat lapsed
  past the grace period meanwhile was retried by another worker, which then finds its run
  folders finished and completes at once.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

from asymcl.errors import ConfigError

#: Heartbeats a running trial may miss before another worker marks it failed and retries it.
GRACE_HEARTBEATS = 4
MAX_RETRIES = 3  # a trial that keeps killing its worker is retried at most this often
DUPLICATE_ATTR = "duplicate_of"
#: Consecutive duplicate proposals after which a worker decides the rounded space is used up.
MAX_DUPLICATES_IN_A_ROW = 25

# Connection errors that are not worth waiting for: the URL itself is wrong.
_PERMANENT = ("authentication failed", "does not exist", "no password supplied", "role ")


OVER_BUDGET_ATTR = "over_budget"


class OverBudget(Exception):
    """Live trials that precede this one already fill the study's budget."""

    def __init__(self, n_trials: int):
        super().__init__(f"the budget of {n_trials} trials is taken by earlier trials")


class DuplicatePoint(Exception):
    """The trial's rounded point is evaluated by another (lower-numbered or finished) trial."""

    def __init__(self, number: int):
        super().__init__(f"same point as trial {number}")
        self.number = number


def _drop_duplicate_warnings(record: logging.LogRecord) -> bool:
    """Optuna logs every caught exception as "Trial N failed"; for a duplicate that is misleading
    (the point is evaluated, by another trial), and the worker prints its own line."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, (DuplicatePoint, OverBudget))


def is_transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused database connection."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return not any(phrase in str(exc) for phrase in _PERMANENT)
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _short(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


class DbRetry:
    """Call a database operation, retrying lost connections with backoff for up to ``give_up_after``
    seconds, then raise a ConfigError that says the finished runs are kept."""

    def __init__(
        self,
        storage_label: str,
        give_up_after: float,
        progress: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.storage_label = storage_label
        self.give_up_after = give_up_after
        self.progress = progress
        self.sleep = sleep

    def __call__(self, what: str, operation: Callable[[], Any], *, also: tuple = ()) -> Any:
        started = time.monotonic()
        delay = 1.0
        while True:
            try:
                return operation()
            except Exception as exc:
                transient = is_transient(exc)
                if not (transient or isinstance(exc, also)):
                    raise
                waited = time.monotonic() - started
                if waited >= self.give_up_after:
                    raise ConfigError(
                        f"--storage {self.storage_label}: the database has been unreachable for "
                        f"{_duration(waited)} ({_short(exc)}); finished runs are kept: run the same "
                        "command again when it is back"
                    ) from exc
                # The errors in ``also`` come from a reachable database (a worker that lost the race
                # to create the tables): "unreachable" would send the user to check the network.
                state = "unreachable" if transient else "busy"
                self.progress(
                    f"[optuna] database {state} while {what} ({_short(exc)}); "
                    f"retrying in {delay:.0f} s (giving up after {_duration(self.give_up_after)})"
                )
                self.sleep(delay)
                delay = min(2 * delay, 60.0)


def open_storage(url: str, *, heartbeat: int, retry: DbRetry):
    """An ``RDBStorage`` on ``url`` with heartbeats, stale-trial retries and a heartbeat that
    survives connection errors."""
    import optuna
    import sqlalchemy.exc as sa
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    class PatientStorage(RDBStorage):
        def record_heartbeat(self, trial_id: int) -> None:
            # Optuna's heartbeat thread dies on the first error; then a short outage would get a
            # healthy trial failed and retried. A missed beat is harmless; the next one catches up.
            try:
                super().record_heartbeat(trial_id)
            except Exception as exc:
                if not is_transient(exc):
                    raise

    if not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat: expected a whole number of seconds >= 1, got {heartbeat!r}")

    def create():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PatientStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat,
                grace_period=GRACE_HEARTBEATS * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )

    try:
        # Workers that start together on an empty database race to create its tables; the loser
        # gets an integrity/programming error and simply tries again.
        return retry("opening the storage", create, also=(sa.IntegrityError, sa.ProgrammingError))
    except ConfigError:
        raise
    except Exception as exc:  # optuna/sqlalchemy raise several kinds for a bad URL: all user errors
        raise ConfigError(f"--storage {retry.storage_label}: cannot open the Optuna storage ({_short(exc)})") from exc


def duplicate_of(study, trial, proposal: dict[str, float], rounding: Callable[[float], float]) -> int | None:
    """The number of another trial that evaluates the same rounded point and has precedence over
    ``trial`` (finished, or running with a lower number), or None."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number == trial.number:
            continue
        if other.state == optuna.trial.TrialState.RUNNING and other.number > trial.number:
            continue
        if all(key in other.params and rounding(other.params[key]) == value for key, value in proposal.items()):
            return other.number
    return None


def _is_retry(trial) -> bool:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None


def over_budget(study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` would go past ``n_trials``: the COMPLETE trials plus the RUNNING or
    WAITING trials that precede it already make ``n_trials``.

    Precedence: a retry of a dead trial comes before any fresh trial (it resumes run folders that
    are already half-trained, and skipping it would leave them orphaned), then the lower number.
    Every worker reads the same trials, so two workers racing for the last place agree on which of
    them takes it. Trials marked as duplicates or over budget are FAIL, so they never count.
    """
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == number)

    def rank(trial) -> tuple[int, int]:
        return (0 if _is_retry(trial) else 1, trial.number)

    complete = sum(t.state == states.COMPLETE for t in trials)
    ahead = sum(t.state in (states.RUNNING, states.WAITING) and rank(t) < rank(me) for t in trials)
    return complete + ahead >= n_trials


class _Teller:
    """Remembers an objective value until Optuna has stored it (see :func:`run_trials`)."""

    def __init__(self):
        self.pending: tuple[int, float] | None = None
        self.duplicate = False


def run_trials(
    study,
    objective: Callable,
    n_trials: int,
    *,
    retry: DbRetry,
    progress: Callable[[str], None],
    label: str,
    poll_seconds: float = 5.0,
) -> None:
    """Run trials of ``study`` in this worker until it has ``n_trials`` COMPLETE trials.

    ``objective(trial) -> float`` may raise :class:`DuplicatePoint` or :class:`OverBudget` (the
    trial ends FAIL and is not counted) or RuntimeError (a failed trial, logged by Optuna).
    """
    import optuna

    states = optuna.trial.TrialState
    teller = _Teller()

    def remembering(trial):
        teller.duplicate = False
        try:
            value = objective(trial)
        except DuplicatePoint:
            teller.duplicate = True
            raise
        teller.pending = (trial.number, value)
        return value

    optimize_logger = logging.getLogger("optuna.study._optimize")
    if _drop_duplicate_warnings not in optimize_logger.filters:
        optimize_logger.addFilter(_drop_duplicate_warnings)
    duplicates_in_a_row = 0
    announced = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while True:
            if teller.pending is not None:  # the objective finished but its value was not stored
                number, value = teller.pending
                retry("storing a trial's result", functools.partial(study.tell, number, value, skip_if_finished=True))
                teller.pending = None
            retry("checking for trials of dead workers", lambda: optuna.storages.fail_stale_trials(study))
            trials = retry("counting trials", lambda: study.get_trials(deepcopy=False))
            count = {state: sum(t.state == state for t in trials) for state in states}
            complete, running, waiting = count[states.COMPLETE], count[states.RUNNING], count[states.WAITING]
            if complete >= n_trials:
                return
            if complete + running >= n_trials and waiting == 0:
                line = (
                    f"[optuna] {label}: {complete}/{n_trials} trials complete, {running} running in "
                    "other workers; waiting for them (a trial whose worker stops is retried here)"
                )
                if line != announced:
                    progress(line)
                    announced = line
                time.sleep(poll_seconds)
                continue
            announced = None
            try:
                # Not inside retry(): after a lost connection the next step is to store this trial's
                # result (top of the loop), not to start another trial.
                study.optimize(remembering, n_trials=1, catch=(RuntimeError, DuplicatePoint, OverBudget))
                teller.pending = None
            except optuna.exceptions.UpdateFinishedTrialError:
                # Its heartbeat lapsed (e.g. the database was away) and another worker failed and
                # retried it; the retry reuses this trial's finished runs.
                teller.pending = None
                progress(
                    f"[optuna] {label}: a trial of this worker was retried by another worker meanwhile; "
                    "the retry uses its runs"
                )
            except Exception as exc:
                if not is_transient(exc):
                    raise
                progress(
                    f"[optuna] database unreachable while running a trial ({_short(exc)}); "
                    + (
                        "its result is stored when the database is back"
                        if teller.pending
                        else "the trial is retried once its heartbeat lapses"
                    )
                )
            if teller.duplicate:
                duplicates_in_a_row += 1
                if duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                    progress(
                        f"[optuna] {label}: the last {duplicates_in_a_row} proposals were all points "
                        f"already evaluated; stopping at {complete} trials (the search space at 3 "
                        "significant digits seems used up; widen 'search:')"
                    )
                    return
            else:
                duplicates_in_a_row = 0
