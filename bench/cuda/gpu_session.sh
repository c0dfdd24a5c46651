#!/bin/sh
# One device call: the gpu tests and the CUDA benchmarks of a build made on the development
# machine (cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90),
# carried with .devdeps (cJSON, which the GPU machine lacks).  Logs and JSON go to $OUT; a
# short table is printed last.  Usage on the GPU machine, from the repository root:
#     sh bench/cuda/gpu_session.sh [build-gpu]
set -u
build=${1:-build-gpu}
out=${OUT:-/tmp/gpu_session}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/$build:$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
status=0
summary=""
for t in "$build"/tests/gpu_test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s)
    timeout 300 "$t" > "$out/$name.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    summary="$summary$(printf '%-28s rc %-3s %4s s' "$name" "$rc" "$(( $(date +%s) - start ))")\n"
done
# SANITIZE="memcheck racecheck" (or one of them): every gpu test once more under
# compute-sanitizer with those tools (SAN_TIMEOUT seconds each, default 300); BENCH=0 skips
# the benchmarks.
if [ -n "${SANITIZE:-}" ]; then
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for t in "$build"/tests/gpu_test_*; do
        [ -x "$t" ] || continue
        for tool in $SANITIZE; do
            name="$(basename "$t").$tool"
            timeout "${SAN_TIMEOUT:-300}" "$cs" --tool $tool --error-exitcode 99 "$t" > "$out/$name.log" 2>&1
            rc=$?
            [ $rc -eq 0 ] || status=1
            summary="$summary$(printf '%-40s rc %-3s %s' "$name" "$rc" "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$name.log" | tail -1)")\n"
        done
    done
fi
for b in "$build"/bench/bench_cuda_*; do
    [ -x "$b" ] && [ "${BENCH:-1}" = 1 ] || continue
    name=$(basename "$b")
    timeout 300 "$b" > "$out/$name.jsonl" 2> "$out/$name.err"
    summary="$summary$(printf '%-28s rc %s' "$name" "$?")\n"
done
# The mma.sync flash-attention kernel (SD_FLASH_WGMMA=0; the sm_80 path, and the fallback where
# the Hopper wgmma kernel is not built): its test and its benchmark, beside the default runs.
if [ -x "$build/tests/gpu_test_cuda_attention" ]; then
    start=$(date +%s)
    SD_FLASH_WGMMA=0 timeout 300 "$build/tests/gpu_test_cuda_attention" > "$out/gpu_test_cuda_attention_mma.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    summary="$summary$(printf '%-28s rc %-3s %4s s' "attention, SD_FLASH_WGMMA=0" "$rc" "$(( $(date +%s) - start ))")\n"
fi
if [ -x "$build/bench/bench_cuda_attention" ] && [ "${BENCH:-1}" = 1 ]; then
    SD_FLASH_WGMMA=0 timeout 300 "$build/bench/bench_cuda_attention" > "$out/bench_cuda_attention_mma.jsonl" 2> "$out/bench_cuda_attention_mma.err"
    summary="$summary$(printf '%-28s rc %s' "bench attention, mma.sync" "$?")\n"
fi
echo "== logs (tails)"
for t in "$build"/tests/gpu_test_*; do f="$out/$(basename "$t").log"; echo "-- $f"; tail -n 6 "$f"; done
echo "== benchmarks"
cat "$out"/bench_cuda_*.jsonl 2>/dev/null
echo "== summary ($(cat "$out/gpu.txt"))"
printf "$summary"
exit $status
