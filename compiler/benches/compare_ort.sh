#!/bin/bash
# Side by side with ONNX Runtime: ResNet-50 and the notebook model, 1 and 2 threads, R rounds (default 3),
# each round ONNX Runtime then resnetc. Needs the peers of ../shared/peers (run its setup.sh once; it puts
# the models and a Python venv under PEERS, default ~/.cache/resnetc-peers) and a release build.
# Prints per line: model, threads, ORT median and min (ms), resnetc median, min and compile (ms), and the
# f32x4 FMA peak resnetc measured right after its run (GFLOP/s over its threads; per core ~46-48 when the host
# is quiet, down to ~35 when another tenant shares the core: compare rounds only near the quiet value).
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=${PEERS:-$HOME/.cache/resnetc-peers}
M=$PEERS/models
V=$PEERS/venv/bin/python
ORT=${ORT_BENCH:-../shared/peers/ort_bench.py}
R=${R:-3}
B=./target/release/resnetc
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(round(d[k],2)) for k in sys.argv[1:]))" "$@"; }
for _ in $(seq "$R"); do
  for t in 1 2; do
    for m in "resnet50 imagenet 40" "notebook_resnet50 seed 200"; do
      set -- $m
      o=$($V "$ORT" "$M/$2.onnx" "$M/$2_x.npy" "$t" "$3" 2>/dev/null | tail -1 | field ort_median_ms ort_min_ms)
      j=$($B bench "specs/$1.yaml" --weights "$M/$2.safetensors" --threads "$t" --iters "$3" --json | field median_ms min_ms compile_ms peak_gflops)
      echo "$1 T$t ort $o resnetc $j"
    done
  done
done
