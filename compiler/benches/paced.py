"""What the lockstep comparisons (ab_paired.py, compare_ort_paired.py) share: resnetc processes paced run
by run through `resnetc bench --paced`, and the alternation of two timed things pair by pair."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(os.environ.get("PEERS", os.path.expanduser("~/.cache/resnetc-peers")), "models")


def start(binary, spec, weights, threads, batch=1):
    """A `binary bench SPEC --weights W --threads T --batch B --paced` process, compiled and warmed up."""
    p = subprocess.Popen([binary, "bench", spec, "--weights", weights, "--threads", str(threads), "--batch",
                          str(batch), "--paced"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready", f"{binary} bench --paced did not start"
    return p


def run(p):
    """One run of a paced process; its milliseconds."""
    p.stdin.write("\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def stop(p):
    p.stdin.close()
    p.wait()


def alternate(pairs, a, b):
    """Calls `a()` and `b()` `pairs` times each, in turns whose order alternates (so that neither always
    runs first); returns their results as two lists."""
    ta, tb = [], []
    for i in range(pairs):
        if i % 2 == 0:
            ta.append(a())
            tb.append(b())
        else:
            tb.append(b())
            ta.append(a())
    return ta, tb
