#!/bin/bash
# Device call: the gradient kernel and its correct variants timed (investigations/ssd_backward_ablation.py:
# ONLY=alternatives, another algorithm for a part; ONLY=schedules, the same work in another order), then the
# fastest of them, where it beats the kernel, applied to the device's copy: its model-sized compiled tests,
# ssd_gpu.py against official (with the kernel as committed where none beats it), optionally (NCU=1) Nsight
# Compute's view of the gradient kernel as committed (investigations/ssd_ncu.py), last the other compiled SSD
# tests of the applied variant. Leaves the tree as it found it. Returns ssd_backward_ablation.json,
# ssd_gpu.json, ssd_alternatives.txt (and ssd_ncu.txt).
#   run: ONLY=schedules bash benchmarks/device/ssd_gradient_alternatives.sh      carry: [".device", ".official-src"]
#   SHORT=1: about 4 minutes instead of 8 (b8 h24 L8192 alone for the variants, ssd_gpu.py at L8192 only)
#   GPU_ALSO="field=value[,...] ...": configs ssd_gpu.py times besides the default (--also)
#   VARIANT="name|name...": time the kernel and these variants only (ssd_backward_ablation.py --variant)
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
export PYTHONPATH=$PWD BENCH_GIT_COMMIT=$(cat .device/commit) ONLY=${ONLY:-schedules}
ABLATION_SHAPES= GPU_SHAPES="--shape 8,24,8192 --shape 8,32,8192"
[ "${SHORT:-0}" = 1 ] && ABLATION_SHAPES="--shape 8,24,8192" || GPU_SHAPES="$GPU_SHAPES --shape 8,24,2048 --shape 8,32,2048"
LOG=$OUT/ssd_alternatives.txt; nvidia-smi -L > $LOG
VARIANTS=(); IFS='|' read -ra NAMES <<< "${VARIANT:-}"; for n in "${NAMES[@]}"; do VARIANTS+=(--variant "$n"); done
timeout 200 python3 benchmarks/investigations/ssd_backward_ablation.py "${VARIANTS[@]}" \
  $([ -n "${VARIANT:-}" ] || echo --$ONLY-only) $ABLATION_SHAPES \
  --out $OUT/ssd_backward_ablation.json >> $LOG 2>&1
BEST=$(python3 -c "
import json, os
rows = list(json.load(open(os.environ['OUT'] + '/ssd_backward_ablation.json'))['shapes'].values())
kind = ('alternative', 'schedule') if os.environ.get('VARIANT') else os.environ['ONLY'][:-1]
names = [n for n in rows[0] if n.startswith(kind) and all(n in r for r in rows)]
total = lambda n: sum(r[n]['gradient_kernel_us'] for r in rows)
best = min(names, key=total, default=None)
print(best if best and total(best) < total('full') else '')")
echo "at $(el) s, fastest $ONLY variant faster than the kernel: ${BEST:-none}" >> $LOG
# the kernel module kept aside and put back (a device's copy of .git can be stale: no git checkout)
KERNELS=mambalab/ops/ssd/triton_kernels.py; cp $KERNELS /tmp/kernels_as_synced.py
restore() { cp /tmp/kernels_as_synced.py $KERNELS; }
apply() { [ -n "$BEST" ] && python3 benchmarks/investigations/ssd_backward_ablation.py --apply "$BEST"; }
apply
CUDA_LAUNCH_BLOCKING=1 timeout 150 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/ops/test_ssd_triton.py \
  -k "test_model_sized_on_gpu or test_16_bit" >> $LOG 2>&1; echo "model-sized rc=$? at $(el) s" >> $LOG
mkdir -p /tmp/ofs && tar xzf .official-src/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/ofs
PYTHONPATH=$PWD:/tmp/ofs/mamba_ssm-2.3.2.post1 timeout 260 python3 benchmarks/ssd_gpu.py --no-sweep --no-decode \
  --budget 220 $GPU_SHAPES $(for c in ${GPU_ALSO:-}; do echo "--also $c"; done) --out $OUT/ssd_gpu.json >> $LOG 2>&1; echo "ssd_gpu rc=$? at $(el) s" >> $LOG
restore
if [ "${NCU:-0}" = 1 ]; then
  timeout 50 ncu --clock-control none -k regex:ssd_chunk_backward -s 1 -c 1 --section SpeedOfLight --section Occupancy \
    --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section SourceCounters python3 benchmarks/investigations/ssd_ncu.py > $OUT/ssd_ncu.txt 2>&1
  echo "ncu (the kernel as committed) rc=$? at $(el) s" >> $LOG
fi
apply   # last: the step a short call can lose
timeout $(( 570 - $(el) )) python3 -m pytest -q -rs --tb=short -p no:cacheprovider -n 4 tests/ops/test_ssd_triton.py \
  tests/layers/test_mamba2.py -k "not test_model_sized_on_gpu" >> $LOG 2>&1; echo "ssd tests rc=$? at $(el) s" >> $LOG
restore
grep -v Warning $LOG | tail -40
