"""The oav validator itself: spec examples must pass and deliberately wrong traffic must fail.

Runs tools/oav/selftest.sh, so a broken validator cannot make the server's traffic look clean.
"""

import subprocess

from conftest import REPO_ROOT


def test_oav_validator_selftest():
    res = subprocess.run(["bash", str(REPO_ROOT / "tools/oav/selftest.sh")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "oav selftest passed" in res.stdout
