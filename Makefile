# scarce-cxr: `make run` (demo app on http://localhost:8501) and `make test` (the whole suite).
.PHONY: run test bench setup
# Some machines set PYTHONDONTWRITEBYTECODE=1: then every process (test workers, the app servers and CLI runs
# the tests start) compiles the project's modules again. __pycache__/ is git-ignored.
unexport PYTHONDONTWRITEBYTECODE

setup:
	bash scripts/setup.sh

run:
	bash scripts/setup.sh
	.venv/bin/python -m streamlit run app.py --server.port 8501 --server.headless true

# -n auto: one pytest-xdist worker more than the cores (tests/conftest.py); --dist loadfile: a file's tests (and
# its module fixtures, e.g. a browser test's server) stay on one worker, the browser tests all on one;
# --no-loadscope-reorder: files are handed out in the order tests/conftest.py sorts them (longest first). `pytest tests/x.py` alone runs serially, as usual.
test:
	bash scripts/setup.sh --browser
	.venv/bin/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

bench:
	bash scripts/setup.sh
	for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
