"""The README's loss example is run as written, so that it cannot rot."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        loss = namespace["loss"].detach()
        assert loss.ndim == 0 and bool(loss.isfinite()) and float(loss) > 0


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    makefile = (README.parent / "Makefile").read_text()
    readme = README.read_text()
    assert "```bash\nmake test\n```" in readme
    assert "\nmake test\n" in ci and "\nmake demo\n" in ci
    assert "\ntest: $(STAMP)\n\t$(BIN)/python -m pytest\n" in makefile
