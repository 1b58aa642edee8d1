"""The README's Python quickstart, run as written against the test server.

The block is taken from README.md (the first ```python fence after "Python SDK"), with only the
bootstrap path pointed at the test server's data dir, and executed in the SDK venv.
"""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_quickstart_runs_as_written(server, capsys):
    text = README.read_text()
    section = text[text.index("### Python SDK"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "rsvault-data/bootstrap.json" in code
    code = code.replace("rsvault-data/bootstrap.json", str(server.data_dir / "bootstrap.json"))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "/providers/Microsoft.RecoveryServices/vaults/my-vault Succeeded" in out
    assert "['my-vault']" in out


def test_backup_quickstart_runs_as_written(server, capsys, tmp_path_factory):
    text = README.read_text()
    section = text[text.index("## Quickstart: back up a VM image"):]
    assert "serve --allow-path rsvault-host" in section
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("rsvault-data/bootstrap.json", str(server.data_dir / "bootstrap.json"))
    # The quickstart's granted directory: one the test server grants (conftest: --allow-path).
    granted = 'os.path.abspath("rsvault-host")'
    assert granted in code
    code = code.replace(granted, repr(str(tmp_path_factory.mktemp("rsvault-host"))))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "backup Completed" in out
    assert "restore Completed" in out
    assert "same bytes: True" in out
