#!/bin/bash
# Device call: the official build in the background (BUILD=1, for vs_official_and_compare.sh), the compiled GPU
# tests, then ssd_gpu.py (extra SSDConfig variants: ALSO="--also field=value ..."). Returns logs1.tgz, ssd_gpu.json.
#   run: BUILD=1 bash benchmarks/device/gpu_checks.sh      carry: [".device", ".official-src"]
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
export PYTHONPATH=$PWD BENCH_GIT_COMMIT=$(cat .device/commit)
L=/tmp/logs1; mkdir -p $L
{ nvidia-smi -L; nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv; echo "commit $BENCH_GIT_COMMIT"; } > $L/gpu.txt
if [ "${BUILD:-0}" = 1 ] && [ ! -f /tmp/official/bss/selective_scan_cuda.so ]; then
  setsid bash -c "bash .official-src/build_official.sh /tmp/official --with-conv > /tmp/build.log 2>&1" < /dev/null &
fi
# the model-sized SSD cases first, in their own process: a crashing kernel must not poison the others' CUDA context
CUDA_LAUNCH_BLOCKING=1 timeout 280 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/ops/test_ssd_triton.py \
  -k test_model_sized_on_gpu > $L/model_sized.txt 2>&1; echo "rc=$? at $(el) s" >> $L/model_sized.txt
timeout 330 python3 -m pytest -q -rs --tb=short -p no:cacheprovider -n 4 tests/gpu tests/ops/test_ssd_triton.py \
  tests/ops/test_triton_gated_norm.py tests/ops/test_triton_cross_entropy.py tests/layers/test_mamba2.py \
  tests/ops/test_triton_linear.py tests/ops/test_state_dtype_steps.py tests/inference -k "not test_model_sized_on_gpu" \
  > $L/gpu_tests.txt 2>&1; echo "tests rc=$? at $(el) s" >> $L/gpu_tests.txt
LEFT=$(( 575 - $(el) ))
mkdir -p /tmp/ofs && tar xzf .official-src/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/ofs
if grep -q "rc=0 " $L/model_sized.txt; then
  PYTHONPATH=$PWD:/tmp/ofs/mamba_ssm-2.3.2.post1 timeout $LEFT python3 benchmarks/ssd_gpu.py --no-sweep \
    --budget $(( LEFT - 110 )) ${ALSO:-} --out $OUT/ssd_gpu.json > $L/ssd_gpu.log 2>&1
  echo "ssd_gpu rc=$? at $(el) s" >> $L/ssd_gpu.log
fi
{ tail -5 /tmp/build.log; ls /tmp/official/bss /tmp/official/bcc; } > $L/build_tail.txt 2>&1
tar czf $OUT/logs1.tgz -C /tmp logs1
echo "done at $(el) s"; tail -2 $L/model_sized.txt; tail -3 $L/gpu_tests.txt; tail -12 $L/ssd_gpu.log
