"""--simulate SCENARIO: the scenario's [host] reserve and tolerance and its [engine]
table hold on the simulated host, except for keys configured explicitly."""

from __future__ import annotations

from pathlib import Path

from squeezed.config import load
from squeezed.daemon import Daemon

SCENARIO = """
[host]
free_kib = 0
reserved_kib = 1000
tolerance_kib = 7
[engine]
stuck_after_s = 3.0
min_poll_s = 0.125
max_poll_s = 0.5
uncooperative_after_s = 9.0
"""


def test_scenario_settings_hold_unless_configured(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    loaded = load(["--simulate", str(scenario), "--poll-min", "0.25",
                   "--balance-tolerance-kib", "3"],
                  config_file=str(tmp_path / "none.conf"), config_dir=str(tmp_path / "none.d"))
    d = Daemon(loaded.config, loaded.options, loaded.provenance)
    d._apply_scenario_settings()
    c = d.cfg
    assert (c.host_reserved_kib, c.balance_tolerance_kib) == (1000, 3)  # 3: given
    assert (c.stuck_after_s, c.poll_min_s, c.poll_max_s, c.uncooperative_after_s) == (
        3.0, 0.25, 0.5, 9.0)  # poll-min: given
    assert c.operation_timeout_s == loaded.config.operation_timeout_s  # not in a scenario
