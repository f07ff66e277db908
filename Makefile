# Phasegate developer entry points. Everything a user types is documented in README.md.
SHELL := /bin/bash
CARGO ?= cargo
CACHE ?= $(or $(PHASEGATE_CACHE),$(HOME)/.cache/phasegate)
E2E_KUBECONFIG ?= $(CACHE)/kubeconfig
E2E_THREADS ?= 3

.PHONY: all build deps crd unit executor-pg17 e2e e2e-real real-node-up real-node-down test chart-test monitoring-test lua-test gitops-test demo demo-down cluster-up cluster-down bench-lock bench-backfill bench-scale bench-order bench-fanout bench-cache-memory fmt lint-rust

all: build

## Install system packages the build and tests need (idempotent).
deps:
	hack/install-deps.sh

build: deps
	$(CARGO) build --bins

## Regenerate the CRD from the Rust types.
crd:
	$(CARGO) run -q -- crd > crds/databasemigrations.phasegate.dev.yaml
	cp crds/databasemigrations.phasegate.dev.yaml charts/phasegate/crds/

## Unit, property and PostgreSQL integration tests (no cluster needed).
unit: deps
	$(CARGO) fmt --check
	$(CARGO) test
	$(MAKE) executor-pg17

## The executor's and `phasegate plan`'s integration tests again, against PostgreSQL 17 (the default run uses 15).
executor-pg17: deps
	PHASEGATE_PG_BINDIR=$$(hack/install-postgres17.sh) $(CARGO) test --test executor --test executor_db_check --test executor_lock_safety --test executor_backfill --test executor_pooler --test executor_replicas --test plan

## Local control plane (kube-apiserver, etcd, controller-manager, scheduler, kwok).
cluster-up: deps
	hack/local-cluster.sh up

cluster-down:
	hack/local-cluster.sh down

## End-to-end suite against the local cluster; set PHASEGATE_E2E_KUBECONFIG to use another.
e2e: deps
	@if [ -z "$$PHASEGATE_E2E_KUBECONFIG" ]; then hack/local-cluster.sh up; fi
	argo=($$(hack/argo-rollouts.sh build)) && \
	PHASEGATE_ARGO_ROLLOUTS_BIN=$${argo[0]} PHASEGATE_ARGO_ROLLOUTS_CRDS=$${argo[1]} \
	PHASEGATE_E2E_KUBECONFIG=$${PHASEGATE_E2E_KUBECONFIG:-$(E2E_KUBECONFIG)} \
	  $(CARGO) test --features e2e --test e2e -- --test-threads=$(E2E_THREADS) --skip gitops::

## The image, the chart and executor Jobs as real containers on a real kubelet joined to the
## local cluster (hack/real-node.sh; needs root): see hack/e2e-real.sh for what it checks.
e2e-real: deps
	hack/e2e-real.sh

real-node-up: deps
	hack/local-cluster.sh up
	hack/real-node.sh up

real-node-down:
	hack/real-node.sh down

## Helm chart: lint, template, server-side dry run, RBAC checks against the local cluster.
chart-test: deps
	hack/chart-test.sh

## The chart's alerts and Grafana dashboard: every query parses (Prometheus' parser) and names
## only metrics the operator exports; `promtool test rules` on the rendered PrometheusRule.
## promtool and the checker build once into $(CACHE) (hack/promtool.sh). No cluster needed.
monitoring-test:
	hack/monitoring-test.sh

## Argo CD Lua health check table (gopher-lua).
lua-test:
	hack/lua-health-test.sh

## GitOps: the health table through Argo CD's own Lua path; every state through kstatus and
## the shipped Flux CEL expressions (Flux's own evaluator); then Argo CD's sync engine
## syncing waves -1/0 against the real operator on the local cluster (tests/e2e/gitops.rs).
## The Go drivers (tests/gitops) build once into $(CACHE)/bin (hack/gitops-driver.sh).
gitops-test: deps
	$$(hack/gitops-driver.sh argocd) health deploy/argocd/health.lua deploy/argocd/health_test.yaml
	$$(hack/gitops-driver.sh flux) deploy/flux/kustomizations.yaml deploy/flux/kstatus_test.yaml
	@if [ -z "$$PHASEGATE_E2E_KUBECONFIG" ]; then hack/local-cluster.sh up; fi
	PHASEGATE_E2E_KUBECONFIG=$${PHASEGATE_E2E_KUBECONFIG:-$(E2E_KUBECONFIG)} \
	  PHASEGATE_GITOPS_DRIVER=$$(hack/gitops-driver.sh argocd) \
	  $(CARGO) test --features e2e --test e2e gitops:: -- --test-threads=$(E2E_THREADS)

## Every test: unit, PostgreSQL integration, chart, health checks, end-to-end on kwok,
## GitOps, and end-to-end with real containers.
test: unit lua-test chart-test monitoring-test e2e gitops-test e2e-real

## The operator driving a real migration on the local cluster and a local PostgreSQL
## (PGBOUNCER=transaction or session: through a PgBouncer in that pool mode).
demo: deps
	PGBOUNCER=$(PGBOUNCER) hack/demo.sh

demo-down:
	hack/demo.sh down

## Application latency while a migration waits for a lock: naive vs retries vs Phasegate.
bench-lock: deps
	hack/bench-lock.sh

## Backfill benchmark: single UPDATE vs `phasegate backfill` under open-loop app load (not a test).
bench-backfill: deps
	hack/bench-backfill.sh

## The operator at scale on its own kwok cluster, baseline vs this tree (not part of `test`;
## PRESET=small|medium|full or DEPLOYMENTS/REPLICAS/MIGRATIONS, BASELINE_REF; see docs/scale.md).
bench-scale: deps
	hack/bench-scale.sh

## Many migrations on one database applied at once, vs a baseline operator (not a test;
## MIGRATIONS, BASELINE_REF, OPERATOR_BIN/BASELINE_BIN; uses the local cluster).
bench-order: deps
	hack/bench-order.sh

## One migration on 1,000 tenant schemas and 200 tenant databases vs a loop of `phasegate apply` per
## tenant, under open-loop app load, then the operator's memory through the local cluster (not a
## test; SCHEMAS, DATABASES, BENCH_OPERATOR=0 skips the cluster part; docs/fleet.md).
bench-fanout: deps
	hack/bench-fanout.sh

## What each cached object costs the operator (heap bytes per pod, Deployment, migration…;
## PODS/DEPLOYMENTS/MIGRATIONS set the counts; no cluster needed; see docs/scale.md).
bench-cache-memory:
	$(CARGO) bench --bench cache_memory

fmt:
	$(CARGO) fmt

lint-rust:
	$(CARGO) clippy --all-targets --features e2e -- -D warnings
