#!/usr/bin/env bash
# The checks that need a CUDA GPU, run on a lent GPU machine from the repository root, in one call:
#   Testing/Device/checks.sh [inference] [stream] [tests] [cpu-threads]   (default: the first three)
# with .device-site/site.tar.xz (Testing/Device/pack_site.sh) carried beside the repository. Each stage's
# log goes to $OUT (the device tool brings that folder back); a stage that fails does not stop the others.
# - tests: the CUDA tests (DeepSegment/Testing/Python/test_cuda.py) and the Lib tests whose "auto" device is
#   the GPU there (engine, frames, sliding window, forward pass, speed options, batch, training, augmentation);
# - inference: benchmark_inference.py on CUDA (speed with the CUDA forward-pass candidates, forward, accuracy);
# - stream: benchmark_stream.py on CUDA (issue #14's latency table);
# - cpu-threads: on the machine's CPU cores (not the GPU), windows across threads against windows together at
#   4, 8 and 16 threads, where the engine does not share windows out until this has been measured.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/device-checks}
SITE=/tmp/device-site
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(inference stream tests)
mkdir -p "$OUT" "$SITE"
if [ ! -d "$SITE/site/SimpleITK" ]; then
  tar -C "$SITE" -xJf .device-site/site.tar.xz || exit 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE/site" "$SITE"/wheels/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE/site" \
    "$SITE"/wheels/crcmod-*.tar.gz || echo "crcmod not built: pyigtl falls back to its pure-Python CRC-64"
fi
export PYTHONPATH="$SITE/site" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, SimpleITK, monai, nnunetv2, pyigtl, crcmod._crcfunext; print('torch', torch.__version__,
      torch.cuda.get_device_name(0), 'cuDNN', torch.backends.cudnn.version(), 'CPUs', __import__('os').cpu_count())"
status=0
for stage in "${STAGES[@]}"; do
  began=$(date +%s)
  case $stage in
    tests)
      timeout 180 python3 -m pytest -q --durations=15 -p no:randomly -p no:cacheprovider -o addopts= \
        DeepSegment/Testing/Python/test_cuda.py DeepSegment/Testing/Python/test_frames.py \
        DeepSegment/Testing/Python/test_sliding_window.py DeepSegment/Testing/Python/test_forward_pass.py \
        DeepSegment/Testing/Python/test_speed_options.py DeepSegment/Testing/Python/test_engine.py \
        DeepSegment/Testing/Python/test_devices.py \
        DeepSegment/Testing/Python/test_training.py TrainingDataExport/Testing/Python/test_augmentation.py \
        2>&1 | tee "$OUT/tests.log" ;;
    inference)
      timeout 110 python3 DeepSegment/Testing/benchmark_inference.py --device cuda --threads 2 --repeats 5 \
        --parts speed forward accuracy --adopt cudnn-autotune cuda-graphs 2>&1 | tee "$OUT/inference.log" ;;
    stream)
      timeout 120 python3 DeepSegment/Testing/benchmark_stream.py --device cuda --seconds 3 --loop-frames 100 \
        --repeats 1 2>&1 | tee "$OUT/stream.log" ;;
    cpu-threads)
      for threads in 4 8 16; do
        timeout 100 python3 DeepSegment/Testing/benchmark_inference.py --device cpu --threads "$threads" \
          --repeats 2 --networks monai-unet --parts speed --without windows-across-threads \
          --windows-across-threads-here
      done 2>&1 | tee "$OUT/cpu-threads.log" ;;
    *) echo "unknown stage $stage"; false ;;
  esac
  code=$?
  echo "== stage $stage: exit $code in $(( $(date +%s) - began )) s" | tee -a "$OUT/stages.txt"
  [ $code -eq 0 ] || status=1
done
exit $status
