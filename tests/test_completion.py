"""squeezectl's bash completion, run by bash itself, and its man page: both
follow the parser, so the IDL's methods and the views."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from squeezed import idl
from squeezed.cli import build_parser
from squeezed.ctl.completion import bash_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "squeezectl.bash-completion"
VIEWS = ("top", "metrics", "record")


def test_shipped_script_is_generated_from_the_parser() -> None:
    assert SCRIPT.read_text() == bash_script(build_parser(idl.load())), "run `make docs`"


def complete(words: list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed)."""
    words_sh = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source {SCRIPT}; COMP_WORDS=({words_sh}); COMP_CWORD={len(words) - 1}; "
              '_squeezectl; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       text=True, timeout=30, cwd=cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return sorted(x for x in r.stdout.split("\n") if x)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    every = complete(["squeezectl", ""])
    assert set(every) == {m.cli for m in idl.load().methods} | set(VIEWS)
    assert complete(["squeezectl", "t"]) == ["top", "transfer"]
    assert complete(["squeezectl", "--protocol", ""]) == ["json", "xmlrpc"]
    assert "--socket" in complete(["squeezectl", "--s"])
    # the value of --dbg is not the command
    assert complete(["squeezectl", "--dbg", "top", "me"]) == [
        "memory-balance", "memory-delete", "memory-reserve", "memory-reserve-range",
        "memory-transfer", "metrics"]
    assert complete(["squeezectl", "--socket", "/x", "top", "--s"]) == ["--sort"]
    assert complete(["squeezectl", "top", "--sort", "d"]) == ["distance", "domid"]
    (tmp_path / "run.jsonl").write_text("")
    assert complete(["squeezectl", "record", "r"], cwd=tmp_path) == ["run.jsonl"]
    assert complete(["squeezectl", "--socket", "ru"], cwd=tmp_path) == ["run.jsonl"]


def test_man_page_covers_every_command() -> None:
    text = (ROOT / "docs" / "squeezectl.1").read_text().replace("\\-", "-")
    missing = [c for c in [m.cli for m in idl.load().methods] + list(VIEWS)
               if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", text)]
    assert missing == []
