"""``asymcl demo`` off a terminal (a log file, CI): one line per run and the table, not the epoch log."""

from __future__ import annotations

from asymcl.cli import main


def test_demo_off_a_terminal_prints_one_line_per_run_and_the_table(tmp_path, capfd):
    # Under pytest stdout and stderr are not terminals: the path `make demo > log` takes.
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    out, err = capfd.readouterr()
    assert "Trainer.fit" not in out + err and " epoch " not in out + err  # neither Lightning's log nor epoch lines
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line.split()[2] for line in lines if line.startswith("[asymcl demo]")] == ["ce", "supcon", "afcl"]
    assert all("s  UA " in line for line in lines if line.startswith("[asymcl demo]"))
    assert len(lines) == 3, lines  # nothing else on stderr
    assert "WA = accuracy, UA = mean per-class recall" in out and len(out.splitlines()) < 20
    # Again: every run is finished, nothing trains, and the lines say so.
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    assert capfd.readouterr().err.count("finished before") == 3
