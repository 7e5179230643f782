import subprocess
import sys


def test_cli_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "asymcl", "--help"], capture_output=True, text=True, check=True
    )
    assert "asymcl" in out.stdout


def test_importing_package_is_light():
    code = "import sys, asymcl, asymcl.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
