#!/usr/bin/env bash
# Packs what the GPU checks (checks.sh) need beside the repository into .device-site/ (git-ignored): the
# Python packages a lent GPU machine lacks (it has PyTorch, numpy, SciPy, pytest but no SimpleITK, MONAI,
# nnU-Net, pyigtl or pydicom, and cannot reach PyPI), the ultrasound cine and the MNI template.
# Usage, from the repository root: Testing/Device/pack_site.sh (then Testing/Device/checks.sh runs there).
# Pure-Python and abi3 packages are copied from this checkout's .venv; packages built for one Python come
# as wheels for the machine's Python (3.12); crcmod comes as its source, built there (its pure-Python
# fallback would add tens of ms per frame to the stream benchmark). Everything travels xz-compressed,
# under the device tool's 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=.venv/lib/python3.11/site-packages
OUT=.device-site
grep -qx '/.device-site/' .git/info/exclude 2>/dev/null || echo '/.device-site/' >> .git/info/exclude
TEMPLATE="$OUT/stage/site/nilearn/datasets/data"
rm -rf "$OUT" && mkdir -p "$OUT/stage/site" "$TEMPLATE" "$OUT/stage/site/data_store/data"
PURE="SimpleITK monai nnunetv2 dynamic_network_architectures acvl_utils batchgenerators nibabel pyigtl pydicom blosc2"
for package in $PURE; do
  cp -r "$SITE/$package" "$OUT/stage/site/"
  cp -r "$SITE"/"$(echo "$package" | tr 'A-Z' 'a-z')"-*.dist-info "$OUT/stage/site/" 2>/dev/null || true
done
# Test data the checks do not read (pydicom's and nibabel's own), except the EPI the accuracy part uses.
rm -rf "$OUT/stage/site/pydicom/data/test_files"
find "$OUT/stage/site/nibabel/tests/data" -type f ! -name example4d.nii.gz -delete
find "$OUT/stage/site" -name __pycache__ -type d -prune -exec rm -rf {} +
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$OUT/stage/wheels" numexpr==2.14.2 ndindex==1.10.1
python3 -m pip download -q --no-deps --no-binary=:all: -d "$OUT/stage/wheels" crcmod==1.7
# pydicom-data's package with only the ultrasound cine the stream tests and benchmark read, and nilearn's
# data folder with only the MNI template, where mni_template.py finds it (a namespace package: only located,
# never imported).
cp "$SITE"/data_store/*.py "$OUT/stage/site/data_store/"
cp "$SITE/data_store/data/color3d_jpeg_baseline.dcm" "$OUT/stage/site/data_store/data/"
cp "$SITE"/nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz "$TEMPLATE/"
tar -C "$OUT/stage" -cf - . | xz -T2 -6 > "$OUT/site.tar.xz"
rm -rf "$OUT/stage"
ls -la "$OUT"
