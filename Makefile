# One Makefile, the same locally and in CI. `make demo` and `make test` work on a fresh clone:
# each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench bench-redis bench-sqlite bench-postgres bench-http \
	bench-events bench-rabbitmq clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,redis,postgres,fast,http,rabbitmq]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dromos demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

check: lint typecheck test

# dromos beside its peers: on a private Redis (each peer in its own venv), then on SQLite,
# then on a private PostgreSQL cluster beside procrastinate; then the HTTP gateway, then the
# event bus beside FastStream; then on a private RabbitMQ node beside Celery and Dramatiq.
bench: bench-redis bench-sqlite bench-postgres bench-http bench-events bench-rabbitmq

bench-redis: $(STAMP)
	$(BIN)/python bench/redis_bench.py

bench-sqlite: $(STAMP)
	$(BIN)/python bench/sqlite_bench.py

bench-postgres: $(STAMP)
	$(BIN)/python bench/postgres_bench.py

bench-http: $(STAMP)
	$(BIN)/python bench/http_bench.py

bench-events: $(STAMP)
	$(BIN)/python bench/events_bench.py

bench-rabbitmq: $(STAMP)
	$(BIN)/python bench/rabbitmq_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
