#!/bin/bash
# Plan once, submit N shards as a Slurm array and a finalize job that waits for them.
#   examples/slurm/submit.sh MANIFEST N [PLAN]      (PLAN: default plan.json)
# Prints the two job ids: "array=ID finalize=ID". The plan and the output tree must be on a
# filesystem every node mounts at the same path (NFS, Lustre: see the README's state model).
set -euo pipefail
manifest=${1:?usage: submit.sh MANIFEST N [PLAN]}
shards=${2:?usage: submit.sh MANIFEST N [PLAN]}
plan=${3:-plan.json}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2086
${MLSYNC:-mlsync} plan "$manifest" --out "$plan" --shards "$shards" -q >/dev/null
array=$(sbatch --parsable --array=0-$((shards - 1)) "$here/mlsync-shard.sbatch" "$plan" "$shards")
array=${array%%;*}
final=$(sbatch --parsable --dependency=afterany:"$array" "$here/mlsync-finalize.sbatch" "$plan")
echo "array=$array finalize=${final%%;*}"
