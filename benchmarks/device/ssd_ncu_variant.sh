#!/bin/bash
# Device call: ssd_gpu.py against official (GPU_ARGS, default b2 L32768; GPU_ARGS=none leaves it out), then the
# gradient kernel's second loop at 1 and 2 pipeline stages and without it (b8 h24 L8192), then Nsight Compute on
# the SSD gradient kernel as committed and on a variant of the kernel modules (files under .device/variant/, paths
# as in the repo, e.g. from `git show <commit>:mambalab/ops/ssd/...`), each exported and printed with
# per-SASS-line stalls (source page). Leaves the tree as it found it. Returns ssd_gpu.json,
# ssd_backward_ablation.json, ncu_{committed,variant}.{txt,csv}, ssd_ncu_variant.txt.
#   run: [GPU_ARGS="--shape 8,24,8192 ..."] bash benchmarks/device/ssd_ncu_variant.sh   carry: [".device", ".official-src"]
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
export PYTHONPATH=$PWD BENCH_GIT_COMMIT=$(cat .device/commit)
LOG=$OUT/ssd_ncu_variant.txt; nvidia-smi -L > $LOG; ncu --version >> $LOG
GPU_ARGS=${GPU_ARGS:---shape 2,24,32768 --shape 2,32,32768}
if [ "$GPU_ARGS" != none ]; then
  mkdir -p /tmp/ofs && tar xzf .official-src/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/ofs
  PYTHONPATH=$PWD:/tmp/ofs/mamba_ssm-2.3.2.post1 timeout 240 python3 benchmarks/ssd_gpu.py --no-sweep --no-decode \
    --budget 200 $GPU_ARGS --out $OUT/ssd_gpu.json >> $LOG 2>&1
  echo "ssd_gpu rc=$? at $(el) s" >> $LOG
fi
profile() {  # $1: name
  timeout 100 ncu --clock-control none -k regex:ssd_chunk_backward -s 1 -c 1 --import-source yes \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis --section SourceCounters -o /tmp/ncu_$1 -f \
    python3 benchmarks/investigations/ssd_ncu.py >> $LOG 2>&1; echo "ncu $1 rc=$? at $(el) s" >> $LOG
  ncu -i /tmp/ncu_$1.ncu-rep --page details > $OUT/ncu_$1.txt 2>&1
  ncu -i /tmp/ncu_$1.ncu-rep --page source --csv --print-source sass > $OUT/ncu_$1.csv 2>&1
}
timeout 180 python3 benchmarks/investigations/ssd_backward_ablation.py --shape 8,24,8192 \
  --variant "schedule: second loop at 1 stage" --variant "schedule: second loop at 2 stages" \
  --variant "no state-side loop (dB, dC of the heads)" --variant "alternative: one pass over the heads, 8 warps" \
  --also heads_per_program=12 --also heads_per_program=8 --out $OUT/ssd_backward_ablation.json >> $LOG 2>&1
echo "loop stages rc=$? at $(el) s" >> $LOG
profile committed
if [ -d .device/variant ] && [ $(el) -lt 460 ]; then
  mkdir -p /tmp/as_synced && cp -r mambalab/ops/ssd /tmp/as_synced/
  cp -r .device/variant/* . && profile variant
  cp -r /tmp/as_synced/ssd/* mambalab/ops/ssd/
fi
grep -v Warning $LOG | tail -30
