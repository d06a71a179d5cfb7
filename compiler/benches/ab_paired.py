"""Two resnetc builds timed in lockstep on one model: one run of each in turn (`resnetc bench --paced`).

Usage: python3 compiler/benches/ab_paired.py PAIRS THREADS r50|nb BIN_A BIN_B  (copy each build to its own
path first). Prints both medians and minimums (ms) and the median and quartiles of the per-pair ratios
B/A (below 1: B faster). On this shared host a few percent are resolved only this way: ab.sh compares
runs seconds apart, and the host's speed changes within seconds.
"""
import os
import statistics
import sys
import time

import paced


def main():
    pairs, threads, model, bin_a, bin_b = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    spec, weights = {"r50": ("resnet50", "imagenet"), "nb": ("notebook_resnet50", "seed")}[model]
    spec = os.path.join(paced.ROOT, "specs", f"{spec}.yaml")
    weights = os.path.join(paced.MODELS, f"{weights}.safetensors")
    a, b = paced.start(bin_a, spec, weights, threads), paced.start(bin_b, spec, weights, threads)

    def run(p):
        # Let the other build's pool threads stop spinning (200 us after a run) before this run starts.
        time.sleep(0.005)
        return paced.run(p)

    ta, tb = paced.alternate(pairs, lambda: run(a), lambda: run(b))
    for p in (a, b):
        paced.stop(p)
    r = sorted(y / x for x, y in zip(ta, tb))
    q = statistics.quantiles(r, n=4)
    print(f"A {statistics.median(ta):.2f} ms (min {min(ta):.2f})  B {statistics.median(tb):.2f} ms "
          f"(min {min(tb):.2f})  B/A median of {pairs} pairs {q[1]:.3f} [{q[0]:.3f}-{q[2]:.3f}]")


if __name__ == "__main__":
    main()
