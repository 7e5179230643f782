import subprocess
import sys


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "asymcl", "--help"], capture_output=True, text=True, check=True)
    assert "asymcl" in out.stdout


def test_importing_package_is_light():
    code = "import sys, asymcl, asymcl.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_parser_takes_the_preset_names_from_the_experiments_layer_without_torch():
    """`asymcl --help` stays light, and the choices are the experiments layer's, not copies."""
    code = (
        "import sys; from asymcl.cli import build_parser; parser = build_parser(); "
        "from asymcl.experiments import preset_names as p; "
        "sub = {a.dest: a for a in parser._subparsers._group_actions[0].choices['reproduce']._actions}; "
        "print('torch' in sys.modules, sub['preset'].choices is p.PRESETS, sub['profile'].choices is p.PROFILES)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
