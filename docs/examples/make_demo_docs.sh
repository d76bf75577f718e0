#!/usr/bin/env bash
# Regenerate docs/demo/ — the README's demo table, frontier figures and timing — from a fresh install:
# a new venv, the CPU torch wheel, `pip install -e .`, then one timed `vlmslim demo`.
#   bash docs/examples/make_demo_docs.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
export HF_HUB_OFFLINE=1
start=$(date +%s)
/usr/bin/time -f "%e %M" -o "$work/time.txt" vlmslim -q demo --out "$work/demo" > "$work/table.txt"
read -r wall rss < "$work/time.txt"
cp "$work/demo/figures/frontier_latency.png" "$work/demo/figures/frontier_size.png" docs/demo/
cp "$work/demo/figures/summary.md" docs/demo/summary.md
{
  echo "# \`vlmslim demo\` — measured"
  echo
  echo "Command: \`vlmslim demo\` (defaults: 100 held-out scenes, batch 20, 1000 bootstrap resamples, CPU)."
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB;"
  echo "python $(python -c 'import platform; print(platform.python_version())'), torch $(python -c 'import torch; print(torch.__version__)'),"
  echo "transformers $(python -c 'import transformers; print(transformers.__version__)'), bitsandbytes $(python -c 'import importlib.metadata as m; print(m.version("bitsandbytes"))'); $(date -u +%Y-%m-%d)."
  echo
  echo "Wall time of the demo on a fresh install (new venv, nothing cached): **${wall} s**; peak RSS $((rss / 1024)) MiB."
  echo
  echo '```'
  cat "$work/table.txt"
  echo '```'
} > docs/demo/README.md
echo "docs/demo/ regenerated (demo took ${wall} s; started $(date -d @"$start" -u +%H:%M:%S) UTC)"
