#!/usr/bin/env bash
# On a CUDA machine: run the CUDA-only tests, then benchmark our U-Net against diffusers at
# 32x32 batch 128 (ddpm_cifar10) and 64x64 batch 64 (config, CelebA) in bf16 with torch.compile.
# The table's "% peak" columns are model FLOP utilisation against the card's bf16 peak that the
# benchmark measures (a large bf16 matmul); the README records the result.
#
#   benchmarks/gpu.sh [OUTPUT.md]     (default: print the table on stdout)
#
# PYTHON selects the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
out="${1:-/dev/stdout}"

if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "error: no CUDA device visible to $py" >&2
    exit 2
fi

echo "== CUDA tests" >&2
"$py" -m pytest tests/test_cuda.py -q -rs >&2

echo "== benchmark (minutes: torch.compile of both models per preset)" >&2
table="$(mktemp)"
trap 'rm -f "$table"' EXIT
{
    echo "### GPU: $("$py" -c 'import torch; print(torch.cuda.get_device_name())'), $(date -u +%Y-%m-%d)"
    echo
    echo '```'
    echo "benchmarks/bench_models.py --device cuda --preset ddpm_cifar10 config --modes bf16 bf16+compile --markdown"
    echo '```'
    "$py" benchmarks/bench_models.py --device cuda --preset ddpm_cifar10 config --modes bf16 bf16+compile --markdown
} > "$table"
cat "$table" > "$out"
