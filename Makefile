.PHONY: install dev test test-slow lint demo
install:
	bash install.sh
dev:
	bash install.sh dev
test: dev
	.venv/bin/python -m pytest -q
test-slow: dev
	.venv/bin/python -m pytest -q -m slow
lint:
	.venv/bin/ruff check .
demo: install
	.venv/bin/danceopd reproduce --preset quick --out runs/quick --seed 0
