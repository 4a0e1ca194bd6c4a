"""Mutation testing (`make mutation`): mutmut over the engine, service.py and
the two codecs, each module run with only the tests that cover it.

Each group runs in its own copy of the tree under $MUTATION_DIR (default
/tmp/squeezed-mutation), with a [tool.mutmut] section written for it, so the
repository's own files are never touched. Prints killed/total per group and
writes each group's survivors to <dir>/<group>/survivors.txt for review;
docs/testing.md records the score and the survivors judged harmless.

    .venv/bin/python tools/mutation.py [GROUP ...]   # default: every group
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("MUTATION_DIR", "/tmp/squeezed-mutation"))
CHILDREN = os.environ.get("MUTATION_CHILDREN", "2")  # the machine has 2 shared cores

# group -> (files mutated, the tests that cover them)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "engine": (["squeezed/engine/*.py"],
               ["tests/test_engine_properties.py", "tests/test_engine_accounting.py",
                "tests/test_engine_batch.py",
                "tests/test_engine_schedule.py", "tests/test_engine_logs.py",
                "tests/test_cannot_free_arguments.py", "tests/test_policy.py",
                "tests/test_sim_host.py", "tests/test_service.py"]),
    "service": (["squeezed/service.py", "squeezed/initial_free.py"],
                ["tests/test_service.py", "tests/test_service_state.py", "tests/faults",
                 "tests/test_compatibility.py"]),
    # the sans-I/O codec tests, the golden bytes and upstream's golden files;
    # not the socket robustness tests (their timeouts make each mutant slow)
    "xmlrpc": (["squeezed/rpc/xmlrpc.py"],
               ["tests/test_codecs.py", "tests/test_wire_golden.py"]),
    "jsonrpc": (["squeezed/rpc/jsonrpc.py"],
                ["tests/test_codecs.py", "tests/test_wire_golden.py",
                 "tests/test_compatibility.py"]),
    # pipelined xenstore requests and the batched target writes
    "xspipe": (["squeezed/xen/xs_pipeline.py", "squeezed/xen/target_writes.py"],
               ["tests/test_xs_pipeline.py", "tests/test_target_writes.py"]),
}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def prepare(group: str) -> Path:
    mutate, tests = GROUPS[group]
    work = OUT / group
    shutil.rmtree(work, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / f)
    pyproject = work / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + (
        "\n[tool.mutmut]\n"
        'source_paths = ["squeezed"]\n'
        f"only_mutate = {_toml_list(mutate)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        "use_git_change_detection = false\n"
        'also_copy = ["docs", "idl", "examples", "squeezed.conf", "squeezed.service", "README.md",'
        ' "Makefile", "dev", "bench", "tools"]\n'
    ))
    return work


def run(group: str) -> dict[str, int]:
    work = prepare(group)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    with open(work / "mutmut-run.log", "w") as log:  # its progress display is long
        subprocess.run([mutmut, "run", "--max-children", CHILDREN], cwd=work, check=False,
                       stdout=log, stderr=subprocess.STDOUT)
    subprocess.run([mutmut, "export-cicd-stats"], cwd=work, check=True)
    stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = subprocess.run([mutmut, "results"], cwd=work, capture_output=True,
                               text=True).stdout
    (work / "survivors.txt").write_text(survivors)
    return stats


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description="Mutation testing of squeezed's core modules (mutmut); "
                    "results in $MUTATION_DIR/<group>/survivors.txt.")
    ap.add_argument("groups", nargs="*", metavar="GROUP",
                    help=f"groups to run (default: all): {', '.join(GROUPS)}")
    groups = ap.parse_args(argv).groups or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group {', '.join(unknown)} (choose from {', '.join(GROUPS)})")
    rows = []
    for g in groups:
        s = run(g)
        killed = s.get("killed", 0) + s.get("timeout", 0)
        checked = killed + s.get("survived", 0)
        rows.append((g, s, killed, checked, 100.0 * killed / checked if checked else 0.0))
    print("\ngroup     killed+timeout / checked   score   (no tests, suspicious, skipped)")
    for g, s, killed, checked, score in rows:
        print(f"{g:9} {killed:6} / {checked:<6}"
              f"          {score:5.1f}%  ({s.get('no_tests', 0)}, {s.get('suspicious', 0)},"
              f" {s.get('skipped', 0)})  survivors: {OUT / g / 'survivors.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
