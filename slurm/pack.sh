#!/bin/bash
# Submit a packing array job of N slices and the merge that runs once every slice succeeded.
#   PACK="shards/pack_3dpw.py --root data/3dpw --split train --out shards/out/3dpw/train --body-model data/body_models/smpl" \
#       slurm/pack.sh 8 [sbatch options for both jobs, e.g. --partition=cpu]
# Prints the two job ids.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
    echo "usage: PACK=\"shards/pack_<dataset>.py ...\" $0 N [sbatch options]" >&2
    exit 2
fi
slices=$1
shift
export SLICES=$slices
array=$(sbatch --parsable --array="0-$((slices - 1))" "$@" slurm/pack.sbatch)
array=${array%%;*}
merge=$(MERGE=1 sbatch --parsable --dependency="afterok:$array" "$@" slurm/pack.sbatch)
echo "slices: job $array, merge: job ${merge%%;*}"
