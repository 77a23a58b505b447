#!/bin/bash
# Device call: the default's model-sized compiled SSD tests, ssd_gpu.py against official at b8 h24 / h32,
# L8192 / L2048, the gradient kernel's launch configs timed (investigations/ssd_backward_ablation.py
# --configs-only: the default beside each of CONFIGS), the training path's CUDA tests, then the other compiled
# SSD tests: the most needed first, so a call cut short keeps them. Returns ssd_gpu.json,
# ssd_backward_ablation.json, ssd_configs.txt.
#   run: bash benchmarks/device/ssd_gradient_configs.sh      carry: [".device", ".official-src"]
#   SHORT=1: the model-sized tests and ssd_gpu.py at L8192 only (a ~4-minute call)
#   GPU_ALSO="field=value[,...] ...": configs ssd_gpu.py times besides the default (--also)
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
export PYTHONPATH=$PWD BENCH_GIT_COMMIT=$(cat .device/commit)
CONFIGS=${CONFIGS:-"stages_backward=2 stages_backward=4 heads_per_program=4 heads_per_program=8"}
LOG=$OUT/ssd_configs.txt; nvidia-smi -L > $LOG
CUDA_LAUNCH_BLOCKING=1 timeout 150 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/ops/test_ssd_triton.py \
  -k "test_model_sized_on_gpu or test_16_bit" >> $LOG 2>&1; echo "model-sized rc=$? at $(el) s" >> $LOG
mkdir -p /tmp/ofs && tar xzf .official-src/mamba_ssm-2.3.2.post1.tar.gz -C /tmp/ofs
PYTHONPATH=$PWD:/tmp/ofs/mamba_ssm-2.3.2.post1 timeout 260 python3 benchmarks/ssd_gpu.py --no-sweep --no-decode \
  --budget 220 $(for c in ${GPU_ALSO:-}; do echo "--also $c"; done) --shape 8,24,8192 --shape 8,32,8192 \
  $([ "${SHORT:-0}" = 1 ] || echo --shape 8,24,2048 --shape 8,32,2048) \
  --out $OUT/ssd_gpu.json >> $LOG 2>&1; echo "ssd_gpu rc=$? at $(el) s" >> $LOG
[ "${SHORT:-0}" = 1 ] && exit 0
timeout 120 python3 benchmarks/investigations/ssd_backward_ablation.py --configs-only \
  $(for c in $CONFIGS; do echo "--also $c"; done) --out $OUT/ssd_backward_ablation.json >> $LOG 2>&1
echo "configs rc=$? at $(el) s" >> $LOG
timeout 60 python3 -m pytest -q -rs --tb=short -p no:cacheprovider tests/gpu/test_training_path.py >> $LOG 2>&1
echo "training path rc=$? at $(el) s" >> $LOG
timeout $(( 570 - $(el) )) python3 -m pytest -q -rs --tb=short -p no:cacheprovider -n 4 tests/ops/test_ssd_triton.py \
  tests/layers/test_mamba2.py -k "not test_model_sized_on_gpu" >> $LOG 2>&1; echo "ssd tests rc=$? at $(el) s" >> $LOG
grep -v Warning $LOG | tail -60
