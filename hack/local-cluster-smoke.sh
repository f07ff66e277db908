#!/usr/bin/env bash
# Smoke test of the local kwok cluster (hack/local-cluster.sh up first): Deployment
# rollout, unready/fail labels, executor-labelled Job completed via a status patch,
# plain Job, Secret, CRD with a CEL rule. Cleans up after itself.
set -euo pipefail
eval "$("$(dirname "${BASH_SOURCE[0]}")/local-cluster.sh" env)"
ns=smoke-$$
trap 'kubectl delete ns $ns --wait=false >/dev/null 2>&1 || true; kubectl delete crd widgets.smoke.phasegate.dev --ignore-not-found >/dev/null 2>&1 || true' EXIT
kubectl create ns $ns >/dev/null
errf=$(mktemp); t0=$(date +%s%N)
el() { echo "$(( ($(date +%s%N) - t0) / 1000000 ))ms"; }
echo "== deployment 3 replicas"
kubectl -n $ns create deployment web --image=nginx:1 --replicas=3 >/dev/null
kubectl -n $ns rollout status deploy/web --timeout=60s
kubectl -n $ns get deploy web -o jsonpath='ready={.status.readyReplicas} updated={.status.updatedReplicas} available={.status.availableReplicas}{"\n"}'
echo "   ($(el))"
echo "== image change"
old=$(kubectl -n $ns get pods -l app=web -o name | sort)
kubectl -n $ns set image deploy/web nginx=nginx:2 >/dev/null
kubectl -n $ns rollout status deploy/web --timeout=60s
for i in $(seq 1 60); do n=$(kubectl -n $ns get pods -l app=web --no-headers | wc -l); [ "$n" = 3 ] && break; sleep 0.5; done
kubectl -n $ns get pods -l app=web -o custom-columns=NAME:.metadata.name,IMAGE:.spec.containers[0].image,PHASE:.status.phase,READY:.status.conditions[?\(@.type==\"Ready\"\)].status,NODE:.spec.nodeName
new=$(kubectl -n $ns get pods -l app=web -o name | sort)
comm -12 <(echo "$old") <(echo "$new") | grep . && { echo "FAIL: old pods remain"; exit 1; } || echo "old pods gone ($(el))"
echo "== unready pod"
kubectl -n $ns run unready --image=x --labels=e2e.phasegate.dev/unready=true >/dev/null
sleep 3
kubectl -n $ns get pod unready -o jsonpath='phase={.status.phase} ready={.status.conditions[?(@.type=="Ready")].status} cs.ready={.status.containerStatuses[0].ready}{"\n"}'
echo "== fail pod"
kubectl -n $ns run failer --image=x --restart=Never --labels=e2e.phasegate.dev/fail=true >/dev/null
sleep 3
kubectl -n $ns get pod failer -o jsonpath='phase={.status.phase} exit={.status.containerStatuses[0].state.terminated.exitCode}{"\n"}'
echo "== executor job"
cat <<YAML | kubectl -n $ns apply -f - >/dev/null
apiVersion: batch/v1
kind: Job
metadata: {name: exec-job}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {phasegate.dev/executor: "true"}
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox}]
YAML
sleep 5
pod=$(kubectl -n $ns get pods -l job-name=exec-job -o jsonpath='{.items[0].metadata.name}')
kubectl -n $ns get pod $pod -o jsonpath='node={.spec.nodeName} phase={.status.phase} conds={.status.conditions[*].type} finalizers={.metadata.finalizers}{"\n"}'
kubectl -n $ns get job exec-job -o jsonpath='job: active={.status.active} succeeded={.status.succeeded} conds={.status.conditions[*].type}{"\n"}'
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
kubectl -n $ns patch pod $pod --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Succeeded\",\"containerStatuses\":[{\"name\":\"main\",\"image\":\"busybox\",\"imageID\":\"\",\"ready\":false,\"restartCount\":0,\"state\":{\"terminated\":{\"exitCode\":0,\"reason\":\"Completed\",\"startedAt\":\"$now\",\"finishedAt\":\"$now\"}}}]}}"
kubectl -n $ns wait job/exec-job --for=condition=Complete --timeout=30s
echo "   ($(el))"
kubectl -n $ns get job exec-job -o jsonpath='job: succeeded={.status.succeeded} conds={.status.conditions[*].type}{"\n"}'
echo "== plain job"
kubectl -n $ns create job plain --image=busybox >/dev/null
kubectl -n $ns wait job/plain --for=condition=Complete --timeout=30s
echo "== failing job"
cat <<YAML | kubectl -n $ns apply -f - >/dev/null
apiVersion: batch/v1
kind: Job
metadata: {name: failjob}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {e2e.phasegate.dev/fail: "true"}
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox}]
YAML
kubectl -n $ns wait job/failjob --for=condition=Failed --timeout=30s
echo "== secret"
kubectl -n $ns create secret generic s1 --from-literal=a=b
echo "== CRD with CEL"
cat <<YAML | kubectl apply -f -
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.phasegate.dev}
spec:
  group: smoke.phasegate.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must be <= max"
            properties:
              min: {type: integer}
              max: {type: integer}
YAML
kubectl wait crd/widgets.smoke.phasegate.dev --for=condition=Established --timeout=30s
sleep 1
printf 'apiVersion: smoke.phasegate.dev/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {min: 1, max: 2}\n' | kubectl -n $ns apply -f -
if printf 'apiVersion: smoke.phasegate.dev/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {min: 3, max: 2}\n' | kubectl -n $ns apply -f - 2>"$errf"; then echo "FAIL: CEL not enforced"; exit 1; fi
echo "CEL rejected: $(cat "$errf")"
echo "== delete executor pod"
kubectl -n $ns delete pod $pod --wait=true --timeout=30s
echo "== cleanup"
kubectl delete crd widgets.smoke.phasegate.dev >/dev/null; rm -f "$errf"
kubectl delete ns $ns --timeout=60s
echo "SMOKE OK ($(el))"
