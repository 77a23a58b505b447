#!/bin/bash
#   run: WAIT=<seconds> bash benchmarks/device/collect_compare.sh      carry: []
# The device call after vs_official_and_compare.sh: hold while the compare and phone-book runs train, then stop them (SIGINT: finished runs kept,
# unfinished ones checkpointed), stop MPS and return the runs, the checkpoints (when small) and the logs.
START=$(date +%s); el() { echo $(( $(date +%s) - START )); }
L=/tmp/logs3; mkdir -p $L
while [ $(el) -lt ${WAIT:-500} ]; do
  echo "$(el) s: $(ls /tmp/std/runs/*.json | wc -l) runs; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)" >> $L/progress.txt
  if ! pgrep -f "mambalab compare" > /dev/null && ! pgrep -f phonebook_digits > /dev/null; then break; fi
  sleep 20
done
pkill -INT -f phonebook_digits
pkill -INT -f "mambalab compare --preset"
for i in $(seq 1 30); do pgrep -f "mambalab compare" > /dev/null || break; sleep 1; done
echo "stopped at $(el) s; left: $(pgrep -fc 'mambalab compare')" >> $L/progress.txt
echo quit | CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe nvidia-cuda-mps-control > /dev/null 2>&1
cp /tmp/compare.log $L/; cp /tmp/pbout/*.log /tmp/pbout/*.json $L/ 2>/dev/null
tar czf $OUT/std_runs.tgz -C /tmp std/invocations.jsonl $(cd /tmp && ls -d std/runs/*.json)
tar czf /tmp/work.tgz -C /tmp $(cd /tmp && ls -d std/runs/*.work 2>/dev/null) 2>/dev/null
ls -la /tmp/work.tgz >> $L/progress.txt
split -b 15m /tmp/work.tgz /tmp/workpart_
i=0; for p in /tmp/workpart_*; do i=$((i+1)); [ $i -le 4 ] && cp $p $OUT/work.tgz.part$i; done
tar czf $OUT/logs3.tgz -C /tmp logs3
echo "call3 done at $(el) s"; tail -5 $L/progress.txt; tail -5 /tmp/compare.log; for f in /tmp/pbout/*.log; do echo $f; tail -2 $f; done
