"""Several `asymcl sweep` workers on one run folder (and one PostgreSQL study), one killed with
SIGKILL mid-run: every point is trained exactly once, the killed one is resumed by another worker,
and the study's trial count agrees with the run folders. Real tiny runs (digits, 1 + 1 epochs).

Each worker is the real CLI (`asymcl.cli.main`) in its own process; the only addition is a
Lightning callback that appends "pid run stage start|end" to a shared log, which is how the test
counts trainings, and that makes the victim hang inside a stage until it is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from asymcl.experiments.report import build_report
from asymcl.experiments.runs import is_complete, iter_run_dirs

pytest.importorskip("asymcl.training.pipeline", reason="the training pipeline is not installed")

TINY = {
    "data.dataset": "digits",
    "data.imbalance": "exp:5",
    "stage1.epochs": 1,
    "stage2.epochs": 1,
    "stage1.batch_size": 128,
    "stage2.batch_size": 128,
    "model.proj_hidden_dim": 32,
    "model.proj_dim": 16,
    "trainer.progress_bar": False,
    "trainer.num_threads": 1,
}

WORKER = r"""
import os, sys, time
from pathlib import Path
from lightning.pytorch.callbacks import Callback
import asymcl.experiments.study as study_module
import asymcl.experiments.sweep as sweep_module
from asymcl.cli import main
from asymcl.training import pipeline

LOG, HANG = os.environ["TRACE_LOG"], os.environ.get("TRACE_HANG")  # HANG: "any" or a stage name

def note(*words):
    with open(LOG, "a") as log:  # O_APPEND: lines of several processes do not interleave
        log.write(" ".join(map(str, (os.getpid(), *words))) + "\n")

class Trace(Callback):
    def __init__(self, run):
        self.run = run
    def _stage(self, trainer):
        return Path(trainer.checkpoint_callback.dirpath).name
    def on_fit_start(self, trainer, module):
        note(self.run, self._stage(trainer), "start")
    def on_train_epoch_start(self, trainer, module):
        if HANG in ("any", self._stage(trainer)):
            note(self.run, self._stage(trainer), "hang")
            time.sleep(600)
    def on_fit_end(self, trainer, module):
        note(self.run, self._stage(trainer), "end")

def runner(config, out_dir):
    return pipeline.run(config, out_dir, callbacks=[Trace(Path(out_dir).name)])

sweep_module.default_runner = study_module.default_runner = lambda: runner
sys.exit(main(sys.argv[1:]))
"""


# ------------------------------------------------------------------ the pieces, without processes


def test_a_point_held_by_another_worker_is_put_aside_then_resumed_or_counted(tmp_path):
    from asymcl.errors import RunLockedError
    from asymcl.experiments.sweep import expand, parse_spec, run_points

    spec = parse_spec({"grid": {"method": ["ce"], "seed": [0, 1, 2]}})
    points = expand(spec)
    attempts: list[str] = []

    def runner(config, out_dir):
        # ce_s0 is held by a worker that then dies (free on the 3rd try: resumed here);
        # ce_s1 is held by a worker that finishes it (complete on the 2nd look: not run here).
        attempts.append(out_dir.name)
        if out_dir.name == "ce_s0" and attempts.count("ce_s0") < 3:
            raise RunLockedError(f"{out_dir} is in use")
        if out_dir.name == "ce_s1":
            out_dir.mkdir(parents=True)
            (out_dir / "metrics.json").write_text('{"status": "complete"}')
            raise RunLockedError(f"{out_dir} is in use")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text('{"status": "complete"}')

    lines: list[str] = []
    result = run_points(
        spec,
        points,
        tmp_path,
        runner=runner,
        configs={p.name: {} for p in points},
        progress=lines.append,
        poll_seconds=0,
    )
    assert attempts == ["ce_s0", "ce_s1", "ce_s2", "ce_s0", "ce_s0"]
    assert result.ran == ["ce_s2", "ce_s0"] and result.others == ["ce_s1"] and result.complete
    assert any("waiting for 1 run(s) that other workers are training (ce_s0)" in line for line in lines)
    assert "3/3 runs complete (1 by other workers)" in lines[-1]


def test_a_worker_process_that_dies_is_named_and_its_runs_finished_by_the_others(tmp_path, monkeypatch, capsys):
    from asymcl.cli import main
    from asymcl.experiments import parallel

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "base": TINY, "grid": {"method": ["ce"], "seed": [0]}}))
    dies = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(parallel, "spawn_workers", lambda *a, **k: [subprocess.Popen(dies)])
    out = tmp_path / "runs"
    assert main(["sweep", "--config", str(spec), "--out", str(out), "--workers", "2"]) == 0
    assert is_complete(out / "ce_s0")
    assert "worker 2 exited with status 3; the other workers finished its runs" in capsys.readouterr().err


def test_database_errors_are_retried_with_backoff_then_a_clear_error():
    import sqlalchemy.exc as sa

    from asymcl.errors import ConfigError
    from asymcl.experiments.shared_study import DbRetry

    lost = sa.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    calls, sleeps, lines = [], [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise lost
        return "ok"

    retry = DbRetry("postgresql://u:***@db/x", 600, lines.append, sleep=sleeps.append)
    assert retry("counting trials", flaky) == "ok"
    assert sleeps == [1.0, 2.0, 4.0] and len(lines) == 3
    assert "database unreachable while counting trials (OperationalError" in lines[0]
    with pytest.raises(ValueError, match="not a connection problem"):  # other errors are not retried
        retry("x", lambda: (_ for _ in ()).throw(ValueError("not a connection problem")))
    impatient = DbRetry("postgresql://u:***@db/x", 0, lines.append, sleep=sleeps.append)
    with pytest.raises(ConfigError, match=r"--storage postgresql://u:\*\*\*@db/x: the database has been unreachable"):
        impatient("x", lambda: (_ for _ in ()).throw(lost))
    lost_race = sa.IntegrityError("CREATE TABLE studies", {}, Exception("duplicate key value"))
    races = [lost_race]

    def create_tables():
        if races:
            raise races.pop()
        return "ok"

    assert retry("opening the storage", create_tables, also=(sa.IntegrityError,)) == "ok"
    assert "database busy while opening the storage (IntegrityError" in lines[-1]  # reachable: not "unreachable"
    wrong_password = sa.OperationalError("c", {}, Exception('FATAL: password authentication failed for user "u"'))
    with pytest.raises(sa.OperationalError):  # a wrong URL is not waited for
        retry("x", lambda: (_ for _ in ()).throw(wrong_password))


def test_duplicate_proposals_defer_to_the_finished_or_lower_numbered_trial():
    import optuna

    from asymcl.experiments.shared_study import duplicate_of
    from asymcl.experiments.study import _round

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.1, 10)
    study.add_trial(optuna.create_trial(params={"g": 2.0004}, distributions={"g": dist}, value=0.5))  # 0
    study.add_trial(
        optuna.create_trial(params={"g": 5.0}, distributions={"g": dist}, state=optuna.trial.TrialState.FAIL)
    )  # 1: e.g. a killed worker's
    study.enqueue_trial({"g": 3.0})
    study.enqueue_trial({"g": 3.0})
    first, second = study.ask(), study.ask()  # 2 and 3 propose the same point at once
    for trial in (first, second):
        assert trial.suggest_float("g", 0.1, 10) == 3.0
    assert duplicate_of(study, second, {"g": 3.0}, _round) == first.number  # the lower number goes on
    assert duplicate_of(study, first, {"g": 3.0}, _round) is None
    assert duplicate_of(study, first, {"g": 2.0}, _round) == 0  # a finished trial has the point
    assert duplicate_of(study, first, {"g": 5.0}, _round) is None  # a failed trial does not count


def test_the_last_place_in_the_budget_goes_to_a_retry_then_to_the_lower_number():
    import optuna

    from asymcl.experiments.shared_study import over_budget

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.1, 10)
    study.add_trial(optuna.create_trial(params={"g": 1.0}, distributions={"g": dist}, value=0.5))  # 0
    study.add_trial(
        optuna.create_trial(params={"g": 2.0}, distributions={"g": dist}, state=optuna.trial.TrialState.FAIL)
    )  # 1: never counts
    # Two workers both counted 1 COMPLETE + 0 RUNNING < 2 and created a trial each.
    first, second = study.ask(), study.ask()  # 2 and 3
    assert not over_budget(study, first.number, 2)  # the lower number takes the last place
    assert over_budget(study, second.number, 2)
    assert not over_budget(study, second.number, 3)  # with room for both, both go on
    # A retry of a dead trial (created later, so with a higher number) comes before fresh trials:
    # it resumes half-trained run folders that nothing else would finish.
    study.enqueue_trial({"g": 4.0}, user_attrs={})
    retry = study.ask()  # 4
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", 1)
    assert not over_budget(study, retry.number, 2)
    assert over_budget(study, first.number, 2)


def test_a_trial_over_budget_trains_nothing_and_is_not_counted(monkeypatch):
    """Two workers both saw room for the last trial; the one with the higher number stops before
    training, ends FAIL (not counted), and this worker then waits for the other's trial."""
    import optuna

    from asymcl.experiments import shared_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.1, 10)
    study.add_trial(optuna.create_trial(params={"g": 1.0}, distributions={"g": dist}, value=0.5))  # 0
    trained, lines, rival = [], [], []
    optimize = study.optimize

    def other_worker_first(*args, **kwargs):
        if not rival:  # another worker creates its trial between this worker's count and its ask
            rival.append(study.ask())
        return optimize(*args, **kwargs)

    monkeypatch.setattr(study, "optimize", other_worker_first)

    def objective(trial):
        trial.suggest_float("g", 0.1, 10)
        if shared_study.over_budget(study, trial.number, 2):
            trial.set_user_attr(shared_study.OVER_BUDGET_ATTR, True)
            raise shared_study.OverBudget(2)
        trained.append(trial.number)
        return 1.0

    def progress(line):
        lines.append(line)
        if "waiting for them" in line:
            study.tell(rival[0], 0.7)  # the other worker finishes

    retry = shared_study.DbRetry("memory", 0, lines.append)
    shared_study.run_trials(study, objective, 2, retry=retry, progress=progress, label="x", poll_seconds=0)
    assert trained == []
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.trials[2].user_attrs == {shared_study.OVER_BUDGET_ATTR: True}
    assert any("1/2 trials complete, 1 running" in line for line in lines)


def _start_workers(
    tmp_path: Path, args: list[str], n: int, hang: str, *, others_after_victim_trains: bool = False
) -> tuple[list[subprocess.Popen], Path]:
    """Worker 0 (the victim) hangs at ``hang``. With ``others_after_victim_trains`` the other workers
    start once the victim has begun training: workers that all start together can take the whole
    budget before the victim holds a trial (it lost the race to create the tables, say), and then
    there is nothing to kill."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "trace.log"
    procs: list[subprocess.Popen] = []
    for index in range(n):
        env = {**os.environ, "TRACE_LOG": str(log), "PYTHONPATH": os.pathsep.join(sys.path)}
        if index == 0:
            env["TRACE_HANG"] = hang
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        if index == 0 and others_after_victim_trains:
            _wait_for_trace(procs[0], log, "start")
    return procs, log


def _trace(log: Path) -> list[tuple[int, str, str, str]]:
    if not log.is_file():
        return []
    return [
        (int(p), run, stage, event) for p, run, stage, event in (line.split() for line in log.read_text().splitlines())
    ]


def _wait_for_trace(victim: subprocess.Popen, log: Path, event: str, timeout: float = 180) -> str:
    """The run in which the victim first wrote ``event``, once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [run for pid, run, _, what in _trace(log) if pid == victim.pid and what == event]
        if seen:
            return seen[0]
        assert victim.poll() is None, victim.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"the victim worker never wrote {event!r} (never reached a training stage)")


def _kill_victim_when_it_hangs(victim: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    hung = _wait_for_trace(victim, log, "hang", timeout)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return hung


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-4000:]
        outputs.append(out)
    return outputs


def _assert_each_stage_trained_once(log: Path, victim_pid: int, killed_run: str, out: Path) -> None:
    """One "end" per (run, stage) of every run folder; the only start without an end is the
    victim's, and the stage it was killed in was finished by another worker without redoing the
    stages before it (resumed, not restarted)."""
    trace = _trace(log)
    runs = sorted(p.name for p in iter_run_dirs(out))
    ends = Counter((run, stage) for _, run, stage, event in trace if event == "end")
    starts = Counter((pid, run, stage) for pid, run, stage, event in trace if event == "start")
    ended_by = {(pid, run, stage) for pid, run, stage, event in trace if event == "end"}
    assert set(run for run, _ in ends) == set(runs)
    assert all(count == 1 for count in ends.values()), ends
    unfinished = [key for key in starts if key not in ended_by]
    (killed,) = unfinished
    assert killed[0] == victim_pid and killed[1] == killed_run
    assert all(count == 1 for count in starts.values())
    finishers = [pid for pid, run, stage, event in trace if event == "end" and (run, stage) == killed[1:]]
    assert finishers and finishers[0] != victim_pid


def test_three_grid_workers_on_one_folder_train_each_point_once(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": TINY,
                "grid": {"method": ["ce", "afcl"], "loss.eta": [5.0, 30.0], "seed": [0, 1, 2]},
            }
        )
    )
    out = tmp_path / "runs"
    procs, log = _start_workers(tmp_path, ["sweep", "--config", str(spec), "--out", str(out)], 3, hang="any")
    killed_run = _kill_victim_when_it_hangs(procs[0], log)
    outputs = _finish(procs[1:])
    runs = sorted(p.name for p in iter_run_dirs(out))
    assert len(runs) == 9 and all(is_complete(out / r) for r in runs)
    _assert_each_stage_trained_once(log, procs[0].pid, killed_run, out)
    assert all("9/9 runs complete" in text for text in outputs)
    # A worker says "running X" only for a run no other worker holds: the surviving workers' logs
    # never both claim one run (the run lock still settles a race between two that start at once).
    lines = [line for text in outputs for line in text.splitlines()]
    claimed = Counter(line.rsplit("running ", 1)[1].strip() for line in lines if "; running " in line)
    # two that check at the same instant both print it; the loser then says it comes back later
    backed_off = Counter(line.split("] ", 1)[1].split(":", 1)[0] for line in lines if "coming back to it later" in line)
    assert claimed and all(n - backed_off[run] == 1 for run, n in claimed.items()), (claimed, backed_off)
    manifest = json.loads((out / "sweep.json").read_text())
    assert len(manifest["commands"]) == 3  # no worker's entry lost to another's write


# ---------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL server in a temporary directory (not the system service)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        # Not under pytest's tmp_path: its parents are private to root, and the server must not
        # run as root, so it runs as the 'postgres' user that Debian's package creates.
        self.root = Path(tempfile.mkdtemp(prefix="asymcl-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://asymcl@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "asymcl", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    bindir = _postgres_bin()
    reason = None
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "psycopg (3) is not installed: pip install 'asymcl[postgres]'"
    if reason:
        if os.environ.get("ASYMCL_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"ASYMCL_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = Postgres(bindir)
    server.start()
    yield server
    server.remove()


def _optuna_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "study.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "pg",
                "base": TINY,
                "grid": {"method": ["afcl"], "seed": [0]},
                "search": {
                    "loss.gamma": {"low": 0.5, "high": 4.0},
                    "loss.eta": {"low": 5.0, "high": 100.0, "log": True},
                },
            }
        )
    )
    return spec


def test_three_optuna_workers_on_postgres_one_killed(tmp_path, postgres):
    import optuna

    out = tmp_path / "runs"
    # The same sampler seed in every worker: their first proposals coincide, so the duplicate rule
    # is exercised too (a real user should give each worker its own seed).
    args = [
        "sweep",
        "--config",
        str(_optuna_spec(tmp_path)),
        "--out",
        str(out),
        "--optuna",
        "4",
        "--storage",
        postgres.url,
        "--heartbeat",
        "1",
        "--sampler-seed",
        "0",
    ]
    procs, log = _start_workers(tmp_path, args, 3, hang="stage2", others_after_victim_trains=True)
    killed_run = _kill_victim_when_it_hangs(procs[0], log)
    _finish(procs[1:])

    study = optuna.load_study(study_name="pg:afcl", storage=postgres.url)
    by_state = Counter(t.state.name for t in study.trials)
    assert by_state["COMPLETE"] == 4 and by_state["RUNNING"] == 0 and by_state["WAITING"] == 0, by_state
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    trial_runs = [run for t in complete for run in t.user_attrs["runs"]]
    folders = sorted(p.name for p in iter_run_dirs(out))
    assert sorted(trial_runs) == folders and all(is_complete(out / f) for f in folders)  # 1 seed: 1 folder a trial
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    killed = [t for t in failed if "duplicate_of" not in t.user_attrs and "over_budget" not in t.user_attrs]
    assert len(killed) == 1  # the victim's trial; every other FAIL is a duplicate or over the budget
    trials = [(t.number, t.state.name, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
    # The killed run folder is finished by exactly one counted trial: usually the retry of the
    # killed trial; but a worker that proposes the same point after the dead trial is failed and
    # before its retry starts runs it itself (nothing else names that point then), and the retry
    # then ends as its duplicate, training nothing. Either way nothing is lost or run twice.
    finisher = [t for t in complete if killed_run in t.user_attrs["runs"]]
    assert len(finisher) == 1 and finisher[0].user_attrs["runs"] == [killed_run], trials
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retries) == 1, trials
    assert finisher[0].number in (retries[0].number, retries[0].user_attrs.get("duplicate_of")), trials
    assert all(t.user_attrs.get("duplicate_of") != t.number for t in failed if t not in killed)
    _assert_each_stage_trained_once(log, procs[0].pid, killed_run, out)
    report = build_report(out, tmp_path / "report", tsne_points=50, progress=lambda _: None)
    assert "4 finished runs under" in report.markdown.read_text()
    (setting,) = report.numbers
    assert len(setting.candidates["afcl"]) == 4


def test_a_worker_waits_for_an_unreachable_database(tmp_path, postgres):
    postgres.stop()
    out = tmp_path / "runs"
    args = [
        "sweep",
        "--config",
        str(_optuna_spec(tmp_path)),
        "--out",
        str(out),
        "--optuna",
        "1",
        "--storage",
        postgres.url,
        "--heartbeat",
        "1",
        "--db-wait",
        "120",
    ]
    (proc,), _ = _start_workers(tmp_path, args, 1, hang="none")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "database unreachable while opening the storage" in line:
            break
    assert seen and "retrying in" in seen[-1], "".join(seen)[-3000:]
    postgres.start()
    out_text = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out_text[-3000:]
    assert "best validation UA" in out_text and len(list(iter_run_dirs(out))) == 1
