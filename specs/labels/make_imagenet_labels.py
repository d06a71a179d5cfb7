"""Writes imagenet.txt next to this script: the 1000 ImageNet-1k class names, one per line in class order, as
keras.applications' `decode_predictions` names them.

Keras downloads those names at run time (imagenet_class_index.json); they are each class's first WordNet lemma
with spaces written as underscores (`tiger_cat`, `jack-o'-lantern`), the classes in ILSVRC-2012 order (sorted
synset ids). This script derives them from the synset and lemma lists that the `timm` package ships on PyPI
(timm/data/_info/imagenet_synsets.txt and imagenet_synset_to_lemma.txt) and checks the result against Keras: the
JSON Keras expects, {"0": ["n01440764", "tench"], ...} as json.dumps writes it, must have the md5 that
keras/src/applications/imagenet_utils.py checks the downloaded file against.

Run (needs pip and PyPI; any Python 3):

    python3 specs/labels/make_imagenet_labels.py
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"  # imagenet_utils.py: file_hash of imagenet_class_index.json
TIMM = "timm==1.0.31"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, TIMM], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as z:
            synsets = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
            lemmas = dict(
                line.split("\t", 1) for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines()
            )
    names = [lemmas[s].split(", ")[0].replace(" ", "_") for s in synsets]
    assert len(names) == 1000, len(names)
    index = json.dumps({str(i): [s, n] for i, (s, n) in enumerate(zip(synsets, names))})
    md5 = hashlib.md5(index.encode()).hexdigest()
    if md5 != KERAS_CLASS_INDEX_MD5:
        sys.exit(f"the derived class index has md5 {md5}, Keras's has {KERAS_CLASS_INDEX_MD5}: not writing")
    with open(os.path.join(HERE, "imagenet.txt"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    print(f"wrote {len(names)} names; they equal Keras's imagenet_class_index.json (md5 {md5})")


if __name__ == "__main__":
    main()
