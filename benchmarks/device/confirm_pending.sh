#!/bin/bash
# The call that confirms a branch of GPU-unmeasured kernel changes (device; carry .device and .official-src), most
# needed first: the compiled tests, SSD timings (ours vs official), the decode step's kernels A/B (base:
# .device/base, filled by `git archive main mambalab | tar x -C .device/base`, main's tree), the SSD profile.
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p /tmp/ofs && tar xzf .official-src/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/ofs
export BENCH_GIT_COMMIT=$(cat .device/commit); OFF=/tmp/ofs/mamba_ssm-2.3.2.post1
T0=$(date +%s); DP=/tmp/decode_profiles; mkdir -p $DP
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -p no:cacheprovider -n 4 tests/ops/test_ssd_triton.py tests/layers/test_mamba2.py \
  tests/ops/test_triton_norm.py tests/ops/test_triton_linear.py tests/gpu > $OUT/gpu_tests.txt 2>&1
tail -15 $OUT/gpu_tests.txt; echo "tests took $(( $(date +%s) - T0 )) s"
PYTHONPATH=$PWD:$OFF python3 benchmarks/ssd_gpu.py --no-sweep --no-decode --budget 200 --also state_side=inline \
  --out $OUT/ssd_gpu.json 2>&1 | tail -40
echo "ssd_gpu done at $(( $(date +%s) - T0 )) s"
i=0
for v in base new; do
  i=$((i+1)); P=$PWD; [ $v = base ] && P=$PWD/.device/base:$PWD
  echo "== mamba2 $v round $i"
  PYTHONPATH=$P timeout 60 python3 benchmarks/investigations/decode_profile.py --preset mamba2-130m --batches 64,1 \
    --state-dtypes default,model --no-compile --out $DP/decode_profile_mamba2_${v}_$i.json 2>&1 | grep -v "^wrote" | cut -c1-900
done
for v in base new; do
  P=$PWD; [ $v = base ] && P=$PWD/.device/base:$PWD
  echo "== mamba $v"
  PYTHONPATH=$P timeout 50 python3 benchmarks/investigations/decode_profile.py --preset mamba-130m --batches 64 \
    --no-compile --out $DP/decode_profile_mamba_${v}.json 2>&1 | grep -v "^wrote" | cut -c1-700
done
tar cf $OUT/decode_profiles.tar -C $DP .  # $OUT brings back 8 files at most
echo "decode done at $(( $(date +%s) - T0 )) s"
[ "$SKIP_PROFILE" = 1 ] || PYTHONPATH=$PWD:$OFF timeout 50 python3 benchmarks/investigations/ssd_profile.py --shape 8,24,2048 \
  --also state_side=inline --out $OUT/ssd_profile.json 2>&1 | tail -30
echo "all took $(( $(date +%s) - T0 )) s"
