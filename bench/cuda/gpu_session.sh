#!/bin/sh
# One device call: the gpu tests and the CUDA benchmarks (bench_cuda_*, and bench_stage3, the
# stage-3 step at Llama-3.2-1B / Llamba-1B shapes) of a build made on the development machine
# (README's developer section, -DSSDISTILL_SHARED_CORE=ON) carried with .devdeps (cJSON, which
# the GPU machine lacks), or of one made here with BUILD=1.  Logs and JSON go to $OUT; the
# benchmark table (ours, anchor, goal, floor) and a short summary are printed last.  Usage on
# the GPU machine, from the repository root:
#     [BUILD=1] sh bench/cuda/gpu_session.sh [build-gpu]
set -u
build=${1:-build-gpu}
out=${OUT:-/tmp/gpu_session}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/$build:$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}"
if [ "${BUILD:-0}" = 1 ]; then
    export CPATH="$PWD/.devdeps/include:${CPATH:-}" LIBRARY_PATH="$PWD/.devdeps/lib:${LIBRARY_PATH:-}"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSSDISTILL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DSSDISTILL_SHARED_CORE=ON > "$out/build.log" 2>&1 && cmake --build "$build" -j >> "$out/build.log" 2>&1 ||
        { tail -n 30 "$out/build.log"; echo "build failed"; exit 1; }
fi
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
# data parallelism end to end (tests/gpu/dist_gpu.sh: the NCCL path on one GPU, 2 ranks on two)
if [ -x "$build/ssdistill" ] && [ "${DIST:-1}" = 1 ]; then
    start=$(date +%s)
    timeout 600 bash tests/gpu/dist_gpu.sh "$build/ssdistill" > "$out/gpu_dist.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    summary="$summary$(printf '%-28s rc %-3s %4s s' gpu_dist "$rc" "$(( $(date +%s) - start ))")\n"
fi
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
for b in "$build"/bench/bench_cuda_* "$build"/bench/bench_stage3; do
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
echo "== benchmarks (ms; anchor: the PyTorch stack on this GPU; floor: bytes / 4.28 TB/s or FLOPs / 777 TFLOP/s)"
for f in "$out"/bench_cuda_*.jsonl "$out"/bench_stage3.jsonl; do [ -f "$f" ] && echo "#file $f" && cat "$f"; done | python3 -c '
import json, sys
shape = ("mixer", "pass", "B", "T", "H", "Hkv", "hd", "N", "M", "K", "rows", "d", "batch", "batch_per_gpu", "world", "seq")
print("%-30s %-48s %10s %10s %10s %10s" % ("bench", "shape", "ours", "anchor", "goal", "floor"))
tag = ""
for line in sys.stdin:
    if line.startswith("#file"):
        tag = " mma.sync" if "_mma" in line else ""
        continue
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if "bench" not in j or "skipped" in j or ("ms" not in j and "tokens_per_s" not in j):
        continue
    sh = " ".join("%s=%s" % (k, j[k]) for k in shape if k in j)
    if j["bench"] == "stage3_step":
        ours = "%.0f tok/s %.1f GiB" % (j["tokens_per_s"], j["peak_gib"])
        print("%-30s %-48s %10s %10s %10s %10s" % ("stage3_step", sh, ours, "25700", "55000", ""))
        continue
    g = lambda k: ("%.3f" % j[k]) if isinstance(j.get(k), (int, float)) and j.get(k) else ""
    ours = g("ms") or ("%.2f TB/s" % j["tb_per_s"] if "tb_per_s" in j else "%.0f TFLOP/s" % j.get("tflops", 0))
    print("%-30s %-48s %10s %10s %10s %10s" % ((j["bench"] + tag)[:30], sh[:48], ours, g("anchor_ms"), g("target_ms"),
                                             g("floor_ms") or g("floor_bytes_ms")))
'

echo "== summary ($(cat "$out/gpu.txt"))"
printf "$summary"
exit $status
