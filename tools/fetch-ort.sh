#!/usr/bin/env bash
# Puts the ONNX Runtime shared library in .ort/ (or the folder given as $1),
# taken from the onnxruntime wheel on PyPI: no other download is needed.
# attrpatch finds .ort/ by itself; or set ORT_DYLIB_PATH to the .so.
set -euo pipefail
# 1.32: its memory planner creates sessions for large graphs (attrpatch's attribution
# graph of a GPT-2-medium-sized model) about 5x faster than 1.31 did.
VERSION="${ORT_VERSION:-1.32.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/.ort}"
if [ -e "$dest/libonnxruntime.so.$VERSION" ]; then
  echo "ONNX Runtime $VERSION already in $dest"
  exit 0
fi
case "$(uname -m)" in
  x86_64) arch=x86_64 ;;
  aarch64) arch=aarch64 ;;
  *) echo "fetch-ort: no onnxruntime wheel for $(uname -m)" >&2; exit 1 ;;
esac
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --implementation cp --python-version 3.11 \
  --platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux_2_17_$arch" \
  -d "$tmp" "onnxruntime==$VERSION"
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
            print("extracted", base)
PY
ln -sf "libonnxruntime.so.$VERSION" "$dest/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.$VERSION" "$dest/libonnxruntime.so"
echo "ONNX Runtime $VERSION in $dest"
