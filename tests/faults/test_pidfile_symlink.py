"""Issue 11 #9: the pidfile is never opened through a symlink."""

from __future__ import annotations

import pytest

from squeezed.daemon.errors import StartupError
from squeezed.daemon.pidfile import pidfile_lock


def test_pidfile_symlink_is_refused(tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "squeezed.pid"
    link.symlink_to(victim)
    with pytest.raises(StartupError, match="symlink"), pidfile_lock(str(link)):
        pass
    assert victim.read_text() == "precious\n"


def test_pidfile_plain(tmp_path) -> None:
    path = tmp_path / "squeezed.pid"
    with pidfile_lock(str(path)):
        assert path.read_text().strip().isdigit()
    assert not path.exists()
