#!/bin/bash
# The device call after vs_official_and_compare.sh: hold while the compare trains, then stop it (SIGINT: finished
# runs kept, unfinished ones checkpointed), stop MPS and return the runs, the checkpoints and the logs.
#   run: WAIT=<seconds> bash benchmarks/device/collect_compare.sh      carry: []
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
L=/tmp/logs3; mkdir -p $L
while [ $(el) -lt ${WAIT:-500} ] && pgrep -f "mambalab compare" > /dev/null; do
  echo "$(el) s: $(ls /tmp/std/runs/*.json | wc -l) runs; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> $L/progress.txt
  sleep 20
done
pkill -INT -f "mambalab compare --preset"
for i in $(seq 1 30); do pgrep -f "mambalab compare" > /dev/null || break; sleep 1; done
echo "stopped at $(el) s; left: $(pgrep -fc 'mambalab compare')" >> $L/progress.txt
echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control > /dev/null 2>&1
cp /tmp/compare.log $L/
tar czf $OUT/std_runs.tgz -C /tmp std/invocations.jsonl $(cd /tmp && ls -d std/runs/*.json)
WORK=$(cd /tmp && ls -d std/runs/*.work 2>/dev/null)
if [ -n "$WORK" ]; then  # checkpoints of unfinished runs, in parts under the device's 16 MiB per file
  tar czf /tmp/work.tgz -C /tmp $WORK && split -b 15m /tmp/work.tgz /tmp/workpart_
  i=0; for p in /tmp/workpart_*; do i=$((i+1)); [ $i -le 5 ] && cp $p $OUT/work.tgz.part$i; done
  ls -la /tmp/work.tgz >> $L/progress.txt
fi
tar czf $OUT/logs3.tgz -C /tmp logs3
echo "done at $(el) s"; tail -5 $L/progress.txt; tail -5 /tmp/compare.log
