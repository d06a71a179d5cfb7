#!/bin/bash
# A/B of resnetc binaries on one model, alternating them N rounds (the host is shared and noisy: compare
# minimums of many runs taken in turns, never two separate sessions). Needs the peers' weights (see
# compare_ort.sh). Usage: ab.sh ROUNDS THREADS r50|nb BINARY...  (copy each build to its own path first).
# Prints each run's median and min (ms), then per binary the best min and the medians.
set -euo pipefail
N=$1; T=$2; MODEL=$3; shift 3
cd "$(dirname "$0")/../.."
M=${PEERS:-$HOME/.cache/resnetc-peers}/models
if [ "$MODEL" = r50 ]; then S=specs/resnet50.yaml; W=$M/imagenet.safetensors; I=30
else S=specs/notebook_resnet50.yaml; W=$M/seed.safetensors; I=150; fi
for _ in $(seq "$N"); do
  for b in "$@"; do
    echo -n "$b "
    "$b" bench "$S" --weights "$W" --threads "$T" --iters "$I" --json |
      python3 -c "import json,sys; d=json.load(sys.stdin); print(round(d['median_ms'],2), round(d['min_ms'],2))"
  done
done | awk '{print; k=$1; if(!(k in mn)||$3<mn[k])mn[k]=$3; med[k]=med[k]" "$2} END{for(k in mn) print "MIN", k, mn[k], "medians:", med[k]}'
