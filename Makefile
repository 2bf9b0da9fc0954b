# The README's two commands. Each target is a script in scripts/, so it also runs without make.
.DEFAULT_GOAL := help
.PHONY: help run test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "  make %-6s %s\n", $$1, $$2 }'

run: ## set up, migrate, seed the demo, serve http://127.0.0.1:5000 with the worker pool
	@scripts/run

test: ## set up, lint (ruff), type check (mypy), then run the suite on SQLite and on PostgreSQL (pytest args: ARGS='-k foo')
	@scripts/test $(ARGS)
