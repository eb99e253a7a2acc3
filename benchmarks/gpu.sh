#!/usr/bin/env bash
# Every GPU check, for a CUDA machine held for a few minutes. Stages, in this order by default:
#
#   tests:    the CUDA-only tests (tests/test_cuda.py, the GPU sampler test; one compiles a small U-Net);
#   cifar10:  bench_models.py, ddpm_cifar10 at 32x32 batch 128 in eager mode: fp32, bf16 and
#             bf16+channels_last (ours and diffusers);
#   compiled: the same in bf16 with torch.compile and CUDA graphs (the default), with the graph's
#             layout left to inductor's heuristic instead of channels-last, and without CUDA
#             graphs (ours; diffusers in fp32 as the reference; about two minutes per row);
#   profile:  profile_step.py, where the time of that bf16+compile training step and network call goes,
#             with the graph channels-last (the default) and with inductor's heuristic;
#   sampling: bench_sampling.py, 64 images with DDPM-1000, DDIM-50 and DPM++-20 in bf16
#             (extrapolated from 200 steps);
#   celeba:   bench_models.py, the CelebA config at 64x64 batch 64: fp32 and bf16 (ours and diffusers),
#             bf16+compile and bf16+cudagraphs (ours);
#   e2e:      train.py on digits on the GPU (bf16 autocast, torch.compile, CUDA graphs) for 300 steps,
#             resumed to 400 under torchrun, then inference.py (DDPM, and DDIM compiled);
#             grid.png and grid-compiled.png are kept.
#
# A cold torch.compile of a U-Net takes most of a minute per graph (training and sampling are
# two; docs/results.md#gpu-h200), so the stages do not fit one 10-minute call: name the ones to run. Each stage has
# a time limit, cut so that the whole script ends within BUDGET seconds (default 560), and one
# that fails does not stop the others. Logs go to OUTDIR (default out/gpu/), one per stage,
# with each stage's exit status and time in summary.txt; the tables are printed last. The
# "% peak" columns are model FLOP utilisation against the peak of the mode's compute dtype as
# the benchmark measures it (the best of a large matmul and a 3x3 convolution).
#
#   benchmarks/gpu.sh [OUTDIR [STAGE...]]
#
# PYTHON selects the interpreter (default: .venv/bin/python, else python3).
set -uo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
all_stages=(tests cifar10 compiled profile sampling celeba e2e)
is_stage() { [[ " ${all_stages[*]} " == *" $1 "* ]]; }
outdir="${1:-out/gpu}"
if is_stage "$outdir"; then
    echo "error: '$outdir' is a stage; the output folder comes first: gpu.sh OUTDIR [STAGE...]" >&2
    exit 2
fi
shift || true
stages=("$@")
(( ${#stages[@]} )) || stages=("${all_stages[@]}")
for name in "${stages[@]}"; do
    if ! is_stage "$name"; then
        echo "error: unknown stage '$name': expected one of ${all_stages[*]}" >&2
        exit 2
    fi
done
mkdir -p "$outdir"
summary="$outdir/summary.txt"
export PYTHONUNBUFFERED=1

if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "error: no CUDA device visible to $py" >&2
    exit 2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} | tee "$summary"

budget=${BUDGET:-560}
# stage NAME SECONDS COMMAND...: run COMMAND with its output in OUTDIR/NAME.log, for at most
# SECONDS and not past the budget.
stage() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    (( limit = limit < budget - SECONDS ? limit : budget - SECONDS ))
    if (( limit < 10 )); then
        echo "$name: skipped, out of time" | tee -a "$summary" >&2
        return
    fi
    echo "== $name (at most ${limit} s)" >&2
    timeout --kill-after=10 "$limit" "$@" >"$outdir/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)') after $((SECONDS - start)) s" | tee -a "$summary" >&2
}

end_to_end() {
    local root=/tmp/ddpm-gpu-e2e run=gpu
    rm -rf "$root"
    set -e
    "$py" train.py --config Configs/digits.yaml train.device=cuda train.precision=bf16 train.compile=true train.cuda_graphs=true \
        train.steps=300 log.root=$root log.run_name=$run log.sample_every=0
    "$py" -m torch.distributed.run --standalone --nproc_per_node=1 train.py --config Configs/digits.yaml \
        --resume train.device=cuda train.precision=bf16 train.compile=true train.cuda_graphs=true train.steps=400 \
        log.root=$root log.run_name=$run log.sample_every=0
    "$py" inference.py --checkpoint "$root/$run" --device cuda --num-samples 64 --sampler ddpm --steps 100 \
        --video none --out "$root/samples"
    "$py" inference.py --checkpoint "$root/$run" --device cuda --num-samples 64 --sampler ddim --steps 50 \
        --compile --video none --out "$root/samples-compiled"
    cp "$root/samples/grid.png" "$outdir/grid.png"
    cp "$root/samples-compiled/grid.png" "$outdir/grid-compiled.png"
}
export py outdir
export -f end_to_end

bench=("$py" benchmarks/bench_models.py --device cuda --repeats 20 --markdown)
for name in "${stages[@]}"; do
    case $name in
        tests) stage tests 150 "$py" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_samplers.py -k "cuda or gpu" ;;
        cifar10) stage cifar10 120 "${bench[@]}" --config ddpm_cifar10 --modes bf16 bf16+channels_last ;;
        compiled) stage compiled 400 "${bench[@]}" --config ddpm_cifar10 \
            --modes bf16+cudagraphs bf16+cudagraphs+inductor_layout bf16+compile --diffusers-modes fp32 ;;
        profile) stage profile 240 "$py" benchmarks/profile_step.py --config ddpm_cifar10 \
            --modes bf16+compile bf16+compile+inductor_layout --rows 30 ;;
        sampling) stage sampling 60 "$py" benchmarks/bench_sampling.py --device cuda --precision bf16 --max-steps 200 ;;
        celeba) stage celeba 300 "${bench[@]}" --config config --modes bf16 bf16+compile bf16+cudagraphs --diffusers-modes bf16 ;;
        e2e) stage e2e 200 bash -c end_to_end ;;
    esac
done

for name in "${stages[@]}"; do
    [[ -f "$outdir/$name.log" ]] || continue
    echo "== $name"
    case $name in
        tests) tail -n 3 "$outdir/tests.log" ;;
        profile) grep -E "^(ddpm_cifar10|train|sample)( by kind)?[,:]" "$outdir/profile.log" ;;
        e2e) grep -E "^(trained steps|checkpoint|sampled|wrote|error)" "$outdir/e2e.log" || tail -n 5 "$outdir/e2e.log" ;;
        *) grep -E '^(\||[A-Za-z].*(GFLOP/s|parameters|images))' "$outdir/$name.log" ;;
    esac
done
echo "== summary"
cat "$summary"
