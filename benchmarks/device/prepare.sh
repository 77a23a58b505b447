#!/bin/bash
# On the CPU machine, before a device session: the ignored folders the device calls carry (see README.md here).
#   bash benchmarks/device/prepare.sh            # from the repository root; ~4 min the first time (the corpus)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in .device/ .corpus/ .official-src/ .compare-cache/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .device .official-src .compare-cache
cp ../shared/anchors/* .official-src/                        # official mamba-ssm + causal_conv1d sources, build script
if [ ! -f .corpus/corpus.txt.xz ]; then                      # the standard preset's corpus, compressed to fit the carry
  python3 -m mambalab corpus build --out /tmp/mambalab-corpus
  mkdir -p .corpus && xz -T2 -0 -c /tmp/mambalab-corpus/corpus.txt > .corpus/corpus.txt.xz
  cp /tmp/mambalab-corpus/manifest.json .corpus/
fi
git rev-parse --short HEAD > .device/commit                   # what the results record (a device's .git may be stale)
git status --porcelain --untracked-files=no | grep -q . && echo "warning: uncommitted changes; commit first" >&2
du -sh .official-src .corpus .compare-cache .device
