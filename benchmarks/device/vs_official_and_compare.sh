#!/bin/bash
# Device call after gpu_checks.sh (its official build awaited): Mamba-2 decode and training vs official (DECODE=0 /
# TRAIN=0 skip them; MODELS names train_vs_official's models), then, in the background from a copy of the tree,
# the standard compare (CUDA MPS when it works; USE_MPS=0, JOBS; a call that finds it running only holds) resumed from the committed runs and the carried
# checkpoints. Holds until HOLD s; collect_compare.sh collects.
# Returns logs2.tgz and the vs-official JSONs.
#   run: HOLD=555 bash benchmarks/device/vs_official_and_compare.sh
#   carry: [".device", ".official-src", ".corpus", ".compare-cache"]
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
export PYTHONPATH=$PWD BENCH_GIT_COMMIT=$(cat .device/commit)
L=/tmp/logs2; mkdir -p $L
nvidia-smi -L > $L/gpu.txt; echo "commit $BENCH_GIT_COMMIT" >> $L/gpu.txt
if [ "${DECODE:-1}" = 1 ] || [ "${TRAIN:-1}" = 1 ]; then
  while [ ! -f /tmp/official/bcc/causal_conv1d_cuda.so ] && [ $(el) -lt 200 ]; do sleep 5; done
fi
echo "build waited until $(el) s" >> $L/gpu.txt; tail -3 /tmp/build.log >> $L/gpu.txt 2>/dev/null
if [ "${DECODE:-1}" = 1 ]; then
  timeout 200 python3 benchmarks/decode_vs_official.py --official /tmp/official --models mamba2 --batches 1,64 \
    --out $OUT/decode_vs_official.json > $L/decode.log 2>&1; echo "decode rc=$? at $(el) s" >> $L/decode.log
fi
MODELS=${MODELS:-official-mamba2,mambalab-mamba2}
if [ "${TRAIN:-1}" = 1 ]; then
  timeout 220 python3 benchmarks/train_vs_official.py --official /tmp/official --interleave --no-profile \
    --models $MODELS --lengths 2048,8192 --out $OUT/train_vs_official.json > $L/train.log 2>&1
  echo "train rc=$? at $(el) s ($MODELS)" >> $L/train.log
fi
# --- background: the compare, from a copy (the next call re-syncs the working tree) ---
if [ ! -d /tmp/cmprepo ]; then
  cp -r $PWD /tmp/cmprepo; rm -rf /tmp/cmprepo/.official-src
  mkdir -p /tmp/corpus && xz -dc .corpus/corpus.txt.xz > /tmp/corpus/corpus.txt && cp .corpus/manifest.json /tmp/corpus/
  mkdir -p /tmp/std && cp -r reports/standard-h100/runs reports/standard-h100/invocations.jsonl /tmp/std/
  [ -f .compare-cache/std.tgz ] && tar xzf .compare-cache/std.tgz -C /tmp   # unfinished runs' checkpoints (std/runs/*.work)
  sha256sum /tmp/corpus/corpus.txt > $L/corpus_sha.txt
fi
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
MPS=0
if [ "${USE_MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  nvidia-cuda-mps-control -d > $L/mps.txt 2>&1
  if timeout 60 python3 -c "import torch; x = torch.ones(4, device='cuda'); print('mps client ok', (x + 1).sum().item())" >> $L/mps.txt 2>&1; then
    MPS=1
  else
    echo quit | nvidia-cuda-mps-control >> $L/mps.txt 2>&1; sleep 2
  fi
fi
[ $MPS = 1 ] || unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
echo "MPS=$MPS at $(el) s" | tee -a $L/mps.txt
cd /tmp/cmprepo; export PYTHONPATH=/tmp/cmprepo
if ! pgrep -f "mambalab compare --preset" > /dev/null; then  # a call that finds it running only holds
  # the trainer's GPU checks first (its waits per step, its fused head and norm): a minute, logged, not gating
  timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/gpu/test_training_path.py > $L/training_path.txt 2>&1
  setsid bash -c "python3 -m mambalab compare --preset standard --device cuda --corpus /tmp/corpus/corpus.txt \
    --out /tmp/std --quiet --jobs ${JOBS:-12} > /tmp/compare.log 2>&1; echo compare rc=\$? >> /tmp/compare.log" < /dev/null &
fi
cd - > /dev/null
while [ $(el) -lt ${HOLD:-560} ]; do
  echo "$(el) s: $(ls /tmp/std/runs/*.json | wc -l) runs; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> $L/progress.txt
  sleep 20
done
tail -c 3000 /tmp/compare.log > $L/compare_tail.txt
tar czf $OUT/logs2.tgz -C /tmp logs2
echo "call2 done at $(el) s"; cat $L/mps.txt; tail -12 $L/decode.log; tail -20 $L/train.log; tail -4 $L/progress.txt
