# mlops-airflow: the README's commands. Everything runs on the embedded default unless told otherwise.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen
LOCAL := $(CURDIR)/.local

export AIRFLOW_HOME ?= $(LOCAL)/airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__EXECUTOR ?= LocalExecutor
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS ?= admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE ?= $(LOCAL)/airflow/passwords.json
export MLOPS_HOME ?= $(LOCAL)
export MLOPS_MLFLOW_UI_URL ?= http://127.0.0.1:$(or $(MLFLOW_UI_PORT),5000)
export GX_ANALYTICS_ENABLED ?= false
# no usage reports from MLflow's client (it would post each logged model, run and search to a remote host)
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true
# OpenMP threads spin briefly, then sleep (plugins/mlops_airflow/__init__.py says why)
export GOMP_SPINCOUNT ?= 10000
MLFLOW_STORE := sqlite:///$(MLOPS_HOME)/mlflow/mlflow.db
DEMO_DATA := $(MLOPS_HOME)/data/landing/credit_default
SCORING_DATA := $(MLOPS_HOME)/data/scoring/credit_default
# make up: loopback only, and as many task slots as cores (LocalExecutor starts one worker process per slot)
AIRFLOW_PORT ?= 8080
# the cores this process may use; nproc alone answers OMP_NUM_THREADS when it is set (OMP_NUM_THREADS=1 gave
# make up one task slot on any machine)
NPROC := $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)
UP_ENV := AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) AIRFLOW__API__WORKERS=1 \
  AIRFLOW__API__BASE_URL=http://127.0.0.1:$(AIRFLOW_PORT) \
  AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
  AIRFLOW__CORE__PARALLELISM=$(NPROC)
MLFLOW_UI_PORT ?= 5000

.PHONY: spec-docs help setup data demo-day airflow-db demo up serve test ci lint typecheck pytest-fast pytest test-cluster bench bench-cluster bench-scale requirements clean browser screenshots

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --user --quiet uv

setup: $(UV) ## install the locked environment (uv is installed first if missing)
	$(UV) sync --frozen --compile-bytecode

data: setup ## generate 15 days of demo batches for credit_default, and one scoring batch (offline, deterministic)
	@test -n "$$(ls -A $(DEMO_DATA) 2>/dev/null)" || $(RUN) python -m mlops_airflow.core.demo_data $(DEMO_DATA) --days 15
	@test -n "$$(ls -A $(SCORING_DATA) 2>/dev/null)" || \
	  $(RUN) python -m mlops_airflow.core.demo_data $(SCORING_DATA) --first-day 15 --days 1

demo-day: data ## land the next day's batch for credit_default (DEMO_DAY_ARGS="--feature-shift 1" drifts it)
	$(RUN) python -m mlops_airflow.core.demo_data $(DEMO_DATA) --next --days 1 $(DEMO_DAY_ARGS)
	$(RUN) python -m mlops_airflow.core.demo_data $(SCORING_DATA) --next --days 1 $(DEMO_DAY_ARGS)

# What the last migration was made for: the locked versions and the two SQLite files (inode: a deleted and
# recreated one is new). Unchanged, `make airflow-db` has nothing to do and says so (each of its three commands
# imports Airflow or MLflow: about 15 s of CPU on 2 cores for nothing). A metadata DB set by
# AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is migrated every time.
DB_STAMP := $(LOCAL)/airflow-db.done
DB_IDENTITY = $$(sha256sum uv.lock | cut -c1-16) $$(stat -c %i $(AIRFLOW_HOME)/airflow.db $(MLOPS_HOME)/mlflow/mlflow.db \
  2>/dev/null | tr '\n' ' ')$${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite}
airflow-db: setup ## migrate the SQLite metadata DB and the MLflow store, create the mlflow_registry pool (once per lock)
	@if [ -z "$${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN}" ] && [ -f $(DB_STAMP) ] && [ "$$(cat $(DB_STAMP))" = "$(DB_IDENTITY)" ]; then \
	  echo "metadata DB and MLflow store: migrated for this uv.lock already ($(DB_STAMP))"; else \
	  rm -f $(DB_STAMP); mkdir -p $(LOCAL) $(MLOPS_HOME)/mlflow; \
	  $(RUN) airflow db migrate > $(LOCAL)/airflow-db.log 2>&1 || { cat $(LOCAL)/airflow-db.log; exit 1; }; \
	  $(RUN) mlflow db upgrade $(MLFLOW_STORE) >> $(LOCAL)/airflow-db.log 2>&1 || { cat $(LOCAL)/airflow-db.log; exit 1; }; \
	  $(RUN) airflow pools set mlflow_registry 1 "promotion and rollback, one at a time" > /dev/null || exit 1; \
	  echo "$(DB_IDENTITY)" > $(DB_STAMP); fi

demo: data airflow-db ## run ct_credit_default once (through Airflow when make up runs, else in this process)
	MLOPS_AIRFLOW_URL=http://127.0.0.1:$(AIRFLOW_PORT) $(RUN) python -m mlops_airflow.demo

up: data airflow-db ## start Airflow (api-server, scheduler, dag-processor, triggerer) and the MLflow UI
	@test -s $(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE) || python3 -c 'import json, secrets, sys; \
	  json.dump({"admin": secrets.token_urlsafe(12)}, open(sys.argv[1], "w"))' $(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE)
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT)  login: admin / $$(python3 -c 'import json, sys; \
	  print(json.load(open(sys.argv[1]))["admin"])' $(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE))"
	@echo "MLflow UI:  $(MLOPS_MLFLOW_UI_URL)"
	@echo "Task slots: $(NPROC) (AIRFLOW__CORE__PARALLELISM); stop with Ctrl-C"
	@# One process per role, no `airflow standalone` (it binds 0.0.0.0 and sizes workers to 32 slots), no
	@# log servers (they bind every interface; the api-server reads the task logs from the local files). The
	@# scheduler imports the training stack once (deploy/preload): the LocalExecutor's task processes fork
	@# from it with MLflow, pandas and scikit-learn already imported. On
	@# Ctrl-C or TERM each role gets SIGTERM and is waited for, so none dies mid-shutdown.
	@cd $(LOCAL) && source $(CURDIR)/.venv/bin/activate && export $(UP_ENV) && pids=(); \
	  stop() { trap - INT TERM EXIT; kill -TERM "$${pids[@]}" 2>/dev/null; wait "$${pids[@]}" 2>/dev/null; }; \
	  trap stop INT TERM EXIT; \
	  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 \
	    --port $(MLFLOW_UI_PORT) --workers 1 > $(LOCAL)/mlflow-ui.log 2>&1 & pids+=($$!); \
	  airflow api-server > $(LOCAL)/api-server.log 2>&1 & pids+=($$!); \
	  airflow dag-processor > $(LOCAL)/dag-processor.log 2>&1 & pids+=($$!); \
	  airflow triggerer --skip-serve-logs > $(LOCAL)/triggerer.log 2>&1 & pids+=($$!); \
	  PYTHONPATH=$(CURDIR)/deploy/preload$${PYTHONPATH:+:$$PYTHONPATH} \
	    airflow scheduler --skip-serve-logs > $(LOCAL)/scheduler.log 2>&1 & pids+=($$!); \
	  echo "logs: $(LOCAL)/{api-server,scheduler,dag-processor,triggerer,mlflow-ui}.log"; \
	  wait -n "$${pids[@]}"; echo "a process of make up ended; stopping the others"

SERVE_PORT ?= 8000
WORKERS ?= 1
serve: setup ## the model server on :8000 for every model's champion (after make demo; WORKERS=n processes); token in .local/serving_token
	@test -n "$$MLOPS_SERVING_TOKEN" || test -s $(LOCAL)/serving_token || (mkdir -p $(LOCAL) && umask 077 && \
	  python3 -c 'import secrets; print(secrets.token_hex(24))' > $(LOCAL)/serving_token)
	@echo "Model server: http://127.0.0.1:$(SERVE_PORT)  bearer token: $${MLOPS_SERVING_TOKEN:+\$$MLOPS_SERVING_TOKEN}$${MLOPS_SERVING_TOKEN:-$(LOCAL)/serving_token}"
	@# exec: SIGTERM goes straight to the server, which stops cleanly and exits 0
	MLOPS_SERVING_TOKEN="$${MLOPS_SERVING_TOKEN:-$$(cat $(LOCAL)/serving_token)}" MLFLOW_TRACKING_URI=$(MLFLOW_STORE) \
	  exec $(UV) run --frozen python -m mlops_airflow.serving --host 127.0.0.1 --port $(SERVE_PORT) --workers $(WORKERS)

lint: setup ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup ## mypy over the package
	$(RUN) mypy

# Two tiers, by folder. The fast tier (tests/unit, tests/dags) runs after every change; the slow tier
# (tests/e2e, tests/serving, tests/ui, tests/cluster) runs whole DAGs, pipelines, servers, a browser and
# interpreters that load the training stack. make test runs the fast tier, make ci (CI) both.
# Test modules spread over pytest-xdist processes, a module's tests in one process (module fixtures start
# servers once). The fast tier is CPU-bound: one process per core. The slow tier's processes mostly wait on
# the subprocesses and servers they start (about 25 CPU-minutes in a 69-minute run of two), so it runs one
# more process than cores.
PYTEST_WORKERS ?= 2
CI_PYTEST_WORKERS ?= 3
PYTEST_OPTS := -q --dist loadfile --durations=15
FAST_TESTS := tests/unit tests/dags
pytest-fast: setup ## the fast tier's tests: unit and DAG integrity
	$(RUN) pytest $(PYTEST_OPTS) -n $(PYTEST_WORKERS) $(FAST_TESTS) $(PYTEST_ARGS)

pytest: setup ## every tier's tests: unit, DAG integrity, end to end, model server, model page, cluster
	$(RUN) pytest $(PYTEST_OPTS) -n $(CI_PYTEST_WORKERS) $(PYTEST_ARGS)

browser: ## Debian's headless Chromium for the model page's browser test (installed when run as root)
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "!!! NO BROWSER: /usr/bin/chromium is missing and this is not root; run 'sudo apt-get install chromium'"; \
	  echo "!!! the model page's browser test (tests/ui) will be SKIPPED"; fi

screenshots: setup browser ## re-take the README's model page screenshots (docs/*.png) in the browser test
	MLOPS_SCREENSHOTS_DIR=$(CURDIR)/docs $(RUN) pytest -q tests/ui/test_model_page.py -k person

test: lint typecheck pytest-fast ## the fast tier, after every change: lint, types, unit and DAG integrity tests

ci: lint typecheck browser pytest ## every tier, what CI runs: the fast tier plus end to end, serving, browser, cluster

test-cluster: setup ## only the native cluster tests (CeleryExecutor, MLflow server, S3 on loopback)
	$(RUN) pytest -q tests/cluster

bench: setup ## benchmarks: parse time, CT task timings, closed-loop simulation
	$(RUN) python benchmarks/run_all.py

bench-cluster: setup ## train-step wall time with two Celery workers against one (about 8 minutes)
	$(RUN) python benchmarks/cluster_parallelism.py

bench-scale: setup ## ct_credit_default at 1M rows against bare pandas + scikit-learn, one train task's memory (ROWS_PER_DAY=666667: 10M)
	$(RUN) python benchmarks/scale.py --rows-per-day $(or $(ROWS_PER_DAY),66667)
	$(RUN) python benchmarks/train_memory.py --rows-per-day $(or $(ROWS_PER_DAY),66667)

spec-docs: setup ## regenerate docs/model-spec.md (the model spec reference) from the schema
	$(RUN) python -m mlops_airflow.core.spec_reference > docs/model-spec.md

requirements: setup ## export the pinned requirements.txt for platforms that take one (e.g. the image)
	$(UV) export --frozen --no-hashes --no-dev --extra cluster --no-emit-project -o requirements.txt

clean: ## remove local state (.local: Airflow DB, MLflow store, demo data)
	rm -rf $(LOCAL)
