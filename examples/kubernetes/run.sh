#!/bin/bash
# Run mlsync-shards.yaml's three steps in order (Kubernetes has no dependency between Jobs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
for step in plan shards finalize; do
    kubectl delete job "mlsync-$step" --ignore-not-found
    kubectl apply -f "$here/mlsync-shards.yaml" --selector "step=$step"
    kubectl wait --for=condition=complete "job/mlsync-$step" --timeout=24h
done
