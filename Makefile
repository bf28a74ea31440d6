# The two commands of the README. Each sets up .venv/ first (idempotent, scripts/setup.sh).
VENV := .venv

.PHONY: smoke test setup lock

setup:
	bash scripts/setup.sh

# Re-resolve pyproject.toml's CPU set-up in a throw-away venv and pin it in requirements/lock-cpu.txt.
lock:
	bash scripts/lock.sh

# The main job on the embedded default: the whole suite with the tiny models on the CPU, then its report.
# The report is rendered even when runs failed (they appear in it with their reasons); the exit code
# still says whether every run succeeded.
smoke: setup
	$(VENV)/bin/nwor run all --profile smoke; rc=$$?; $(VENV)/bin/nwor report --profile smoke && exit $$rc

test: setup
	$(VENV)/bin/python -m pytest -ra
