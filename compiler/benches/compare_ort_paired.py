"""ONNX Runtime and resnetc timed in turns, a short block of runs each, N pairs of blocks per model and
thread count.

The host is shared and its speed changes by up to 2x from second to second, so two engines timed in
separate windows of several seconds (compare_ort.sh) can differ by the load alone. Here a block of
ONNX Runtime runs is followed (or preceded: the order alternates) by a block of resnetc runs in a
`resnetc bench --paced` process, and the ratio is taken per pair of blocks. Each block starts with
warm-up runs that are not timed: the other engine's runs evict this one's weights from the caches
(single runs in strict alternation measured ONNX Runtime 5-15 % slower than back to back, and
resnetc, whose 249 MB of packed weights never stay in cache, hardly at all), and ONNX Runtime's idle
threads spin for 20-50 ms after a run, which must not overlap resnetc's runs. Prints per model and
thread count: both engines' medians and minimums (ms) and the median and quartiles of the per-pair
ratios resnetc/ONNX Runtime.

Run with the peers' Python (it has numpy and onnxruntime; see ../shared/peers and compare_ort.sh):
    ~/.cache/resnetc-peers/venv/bin/python compiler/benches/compare_ort_paired.py [PAIRS]
Needs a release build (cargo build --release). Environment: PEERS (default ~/.cache/resnetc-peers),
RESNETC (the binary, default target/release/resnetc), BATCH (default 1: the peers' input repeated to that
many items; resnetc compiles its kernels to fold the batch).
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort

import paced

MODELS = paced.MODELS
PAIRS = int(sys.argv[1]) if len(sys.argv) > 1 else 60
BATCH = int(os.environ.get("BATCH", "1"))
RESNETC = os.environ.get("RESNETC", os.path.join(paced.ROOT, "target", "release", "resnetc"))
# Idle time before every block: both engines' pool threads spin for a while after a run and must not
# compete with the other engine's runs. resnetc's spin 200 us; ONNX Runtime's between 20 and 50 ms here
# (measured on the notebook model at 2 threads: resnetc's median 25 ms with 20 ms of idle between the
# runs, 12 ms with 50 ms, 100 ms or 200 ms, 11-12 ms with ONNX Runtime's spinning turned off).
SETTLE = 0.1
# Per block: untimed warm-up runs, then timed runs (the block's time is their median).
WARM, RUNS = 2, 3


def dynamic_batch(path):
    """The peers' ONNX models fix the batch at 1: a copy whose input's batch dimension is free (the graph
    itself is batch-agnostic: its Flatten and Gemm take any batch), in a temporary file."""
    import tempfile

    import onnx

    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for v in model.graph.output:
        v.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    out = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
    onnx.save(model, out)
    return out


def session(onnx, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx, so, providers=["CPUExecutionProvider"])


def main():
    print(f"block medians of {RUNS} runs after {WARM} warm-up runs, batch {BATCH}")
    print(f"{'model':<18} {'threads':>7} {'pairs':>5}  {'ORT median (min)':>18}  {'resnetc median (min)':>21}  "
          f"{'ratio median [quartiles]':>26}")
    for spec, weights in [("resnet50", "imagenet"), ("notebook_resnet50", "seed")]:
        x = np.load(os.path.join(MODELS, f"{weights}_x.npy"))
        x = np.concatenate([x] * BATCH)[:BATCH]
        for threads in (1, 2):
            onnx = os.path.join(MODELS, f"{weights}.onnx")
            s = session(dynamic_batch(onnx) if BATCH > 1 else onnx, threads)
            name = s.get_inputs()[0].name
            xin = {name: x.transpose(0, 3, 1, 2).copy()}
            for _ in range(3):
                s.run(None, xin)
            p = paced.start(RESNETC, os.path.join(paced.ROOT, "specs", f"{spec}.yaml"),
                            os.path.join(MODELS, f"{weights}.safetensors"), threads, BATCH)

            def ort_run():
                t = time.perf_counter()
                s.run(None, xin)
                return (time.perf_counter() - t) * 1e3

            def block(run):
                time.sleep(SETTLE)
                ts = [run() for _ in range(WARM + RUNS)]
                return float(np.median(ts[WARM:]))

            o, r = paced.alternate(PAIRS, lambda: block(ort_run), lambda: block(lambda: paced.run(p)))
            paced.stop(p)
            o, r = np.array(o), np.array(r)
            q = np.percentile(r / o, [25, 50, 75])
            print(f"{spec:<18} {threads:>7} {PAIRS:>5}  {np.median(o):>9.1f} ({o.min():>6.1f})  "
                  f"{np.median(r):>12.1f} ({r.min():>6.1f})  {q[1]:>9.2f}x [{q[0]:.2f}-{q[2]:.2f}]", flush=True)


if __name__ == "__main__":
    main()
