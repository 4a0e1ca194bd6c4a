# squeezed: developer and installation targets. `make help` lists them.
#
# `make install` copies the pure-Python package into a private directory,
# $(PKGLIBDIR) (default $(PREFIX)/lib/squeezed), and writes two small wrapper scripts,
# $(SBINDIR)/squeezed and $(BINDIR)/squeezectl, that put that directory first on
# sys.path and run $(PYTHON) in isolated mode (-I: no PYTHONPATH, no user site).
# Why not pip: this needs no network and no build backend, stages cleanly into
# $(DESTDIR), never touches the interpreter's site-packages (PEP 668), and
# `make uninstall` can remove exactly what was installed. The wrappers find the package
# relative to their own location, so a staged tree runs in place.
# Run-time dependencies come from $(PYTHON): on Debian, apt install python3-cffi
# python3-defusedxml python3-daemon (or set PYTHON to a virtual environment's python).

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
LIBDIR     ?= $(PREFIX)/lib
PKGLIBDIR  ?= $(LIBDIR)/squeezed
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
# systemd only reads units from fixed places, so this does not follow PREFIX.
UNITDIR    ?= /lib/systemd/system
# bash-completion's directory for completions loaded on demand.
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
# The interpreter the installed programs run with (their #! line).
PYTHON     ?= /usr/bin/python3

VENV       := .venv/bin/python
STAMP      := .venv/.installed
# Files of the package that are installed (as in pyproject's package-data). Symlinks
# too: squeezed/_idl/memory.json points at idl/memory.json (install copies the target).
PKG_FILES   = $(shell find squeezed -name __pycache__ -prune -o \( -type f -o -type l \) \
                \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.toml' \
                   -o -name '*.json' -o -name py.typed \) -print)

.PHONY: help test run lint bench bench-scale test-xen docs install uninstall mutation

help:
	@echo "make test       run the test suite (./dev test)"
	@echo "make run        run squeezed on the simulated host (./dev run)"
	@echo "make lint       ruff check and mypy (as CI: tests/test_lint.py)"
	@echo "make bench      engine benchmark"
	@echo "make bench-scale  a thousand guests: simulators, engine vs upstream, whole daemon"
	@echo "make test-xen   tests against real Xen under QEMU"
	@echo "make docs       regenerate docs/api.md from the IDL"
	@echo "make mutation   mutation testing of the engine, service and codecs (slow)"
	@echo "make install    install (PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) PYTHON=$(PYTHON))"
	@echo "make uninstall  remove what make install installed"

$(STAMP): pyproject.toml
	./dev setup

test:
	./dev test

run:
	./dev run

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/mypy squeezed

bench: $(STAMP)
	$(VENV) bench/bench_engine.py
	$(VENV) bench/bench_stack.py
	$(VENV) bench/bench_switch.py

# About 8 minutes; writes docs/benchmarks-scale.md (QUICK=1: fewer runs, ~4 minutes).
bench-scale: $(STAMP)
	$(VENV) bench/bench_scale.py $(if $(QUICK),--quick)

test-xen: $(STAMP)
	SQUEEZED_TEST_XEN=1 $(VENV) -m pytest -m xen tests/xen

# mutmut over the engine, service.py and the two codecs, each with its covering tests
# (tools/mutation.py; copies of the tree in $(MUTATION_DIR)). Results: docs/testing.md.
MUTATION_DIR ?= /tmp/squeezed-mutation
mutation: $(STAMP)
	MUTATION_DIR=$(MUTATION_DIR) $(VENV) tools/mutation.py $(GROUPS)

# Through a temporary file, so that a failure does not leave an empty docs/api.md.
# squeezectl's bash completion is generated from its parser (so from the IDL) too.
docs: $(STAMP)
	$(VENV) -m squeezed.idl --markdown > docs/api.md.tmp
	mv docs/api.md.tmp docs/api.md
	$(VENV) -m squeezed.ctl.completion > squeezectl.bash-completion.tmp
	mv squeezectl.bash-completion.tmp squeezectl.bash-completion

# A wrapper: @MODULE@ is the module whose main() runs, @LIBREL@ the package directory
# relative to the wrapper's own directory.
define WRAPPER
#!$(PYTHON) -I
"""Installed by squeezed's make install: runs @MODULE@.main from $(PKGLIBDIR)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "@LIBREL@"))
if __name__ == "__main__":
    from @MODULE@ import main

    sys.exit(main())
endef
export WRAPPER

install:
	@test -n "$(PKG_FILES)" || { echo "make install: run from the source tree" >&2; exit 1; }
	@$(PYTHON) -c 'import cffi, defusedxml, daemon' 2>/dev/null || echo "make install:" \
	    "warning: $(PYTHON) lacks cffi, defusedxml or python-daemon, which squeezed needs" \
	    "to run (Debian: apt install python3-cffi python3-defusedxml python3-daemon)" >&2
	@# Only our own package directory: PKGLIBDIR could be set to a shared one.
	rm -rf "$(DESTDIR)$(PKGLIBDIR)/squeezed"
	for f in $(PKG_FILES); do \
	    install -D -m 0644 "$$f" "$(DESTDIR)$(PKGLIBDIR)/$$f" || exit 1; \
	done
	$(PYTHON) -m compileall -q -d "$(PKGLIBDIR)" "$(DESTDIR)$(PKGLIBDIR)" >/dev/null \
	    || echo "make install: could not precompile with $(PYTHON) (harmless)" >&2
	install -d "$(DESTDIR)$(SBINDIR)" "$(DESTDIR)$(BINDIR)"
	printf '%s\n' "$$WRAPPER" | sed -e 's|@MODULE@|squeezed.daemon|' \
	    -e "s|@LIBREL@|$$(realpath -m --relative-to='$(SBINDIR)' '$(PKGLIBDIR)')|" \
	    > "$(DESTDIR)$(SBINDIR)/squeezed"
	printf '%s\n' "$$WRAPPER" | sed -e 's|@MODULE@|squeezed.cli|' \
	    -e "s|@LIBREL@|$$(realpath -m --relative-to='$(BINDIR)' '$(PKGLIBDIR)')|" \
	    > "$(DESTDIR)$(BINDIR)/squeezectl"
	chmod 0755 "$(DESTDIR)$(SBINDIR)/squeezed" "$(DESTDIR)$(BINDIR)/squeezectl"
	install -d "$(DESTDIR)$(UNITDIR)"
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' squeezed.service \
	    > "$(DESTDIR)$(UNITDIR)/squeezed.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/squeezed.service"
	install -D -m 0644 docs/squeezed.8 "$(DESTDIR)$(MANDIR)/man8/squeezed.8"
	install -D -m 0644 docs/squeezectl.1 "$(DESTDIR)$(MANDIR)/man1/squeezectl.1"
	install -D -m 0644 squeezectl.bash-completion "$(DESTDIR)$(COMPLETIONDIR)/squeezectl"
	@# Never overwrite an administrator's configuration.
	@if [ -e "$(DESTDIR)$(SYSCONFDIR)/squeezed.conf" ]; then \
	    echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	else \
	    echo "install -D -m 0644 squeezed.conf $(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	    install -D -m 0644 squeezed.conf "$(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	fi
	@if [ -z "$(DESTDIR)" ]; then echo "now run: systemctl daemon-reload"; fi

uninstall:
	rm -f "$(DESTDIR)$(SBINDIR)/squeezed" "$(DESTDIR)$(BINDIR)/squeezectl"
	rm -f "$(DESTDIR)$(UNITDIR)/squeezed.service" "$(DESTDIR)$(MANDIR)/man8/squeezed.8"
	rm -f "$(DESTDIR)$(MANDIR)/man1/squeezectl.1" "$(DESTDIR)$(COMPLETIONDIR)/squeezectl"
	rm -rf "$(DESTDIR)$(PKGLIBDIR)/squeezed"
	rmdir "$(DESTDIR)$(PKGLIBDIR)" 2>/dev/null || true
	@# The configuration goes only if it is still the one shipped.
	@if cmp -s squeezed.conf "$(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; then \
	    echo "rm -f $(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	    rm -f "$(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	elif [ -e "$(DESTDIR)$(SYSCONFDIR)/squeezed.conf" ]; then \
	    echo "keeping modified $(DESTDIR)$(SYSCONFDIR)/squeezed.conf"; \
	fi
