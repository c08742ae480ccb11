# Developer shortcuts.  The whole suite (as root, with the Debian packages it drives) is
# `sh .ci/test`; these targets need neither root nor those packages.
PYTHON ?= .venv/bin/python

.PHONY: venv unit lint typecheck check

venv:
	. ./.ci/bootstrap.sh && otp_bootstrap "test,postgresql"

unit: venv  ## the unit tests, as any user (no root, no sshd, no packages)
	$(PYTHON) -m pytest -q tests/unit

lint: venv  ## ruff: lint and formatting
	$(PYTHON) -m ruff check otp_agent pam_helper tests bench contrib
	$(PYTHON) -m ruff format --check otp_agent pam_helper tests bench contrib

typecheck: venv  ## mypy --strict on the package, relaxed on tests and benchmarks
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy tests bench

check: lint typecheck unit
