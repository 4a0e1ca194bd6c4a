"""The program's shape: production never loads the simulator, and a bad
--simulate scenario is a usage error (exit 2), not a crash."""

from __future__ import annotations

import subprocess
import sys


def test_production_import_does_not_load_the_simulator():
    code = ("import squeezed.daemon, squeezed.cli, sys; "
            "print([m for m in sys.modules if m.startswith('squeezed.sim')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_bad_scenario_file_exits_2_naming_it(short_tmp):
    bad = short_tmp / "bad.toml"
    bad.write_text("[host]\ntotal_kib = 'lots'\n")
    r = subprocess.run([sys.executable, "-m", "squeezed.daemon", "--simulate", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "bad.toml" in r.stderr
