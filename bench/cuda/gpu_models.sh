#!/bin/sh
# One device call for the model-level GPU checks (issue 5, items 5 to 7), on a build made on
# the development machine with -DSSDISTILL_SHARED_CORE=ON (see gpu_session.sh) and a copy of
# the test data carried with it:
#   check-ref --device cuda on every HF reference in $SSDISTILL_DATA/hf,
#   bench_stage3 (the stage-3 step at Llama-3.2-1B / Llamba-1B shapes) unless STAGE3=0,
#   distill of RECIPES (default recipes/stories260k-quick.json) with --device cuda, its eval
#   beside the CPU run's when runs/<name>-cpu/eval.json is there (DISTILL_TIMEOUT seconds each).
# Logs and JSON go to $OUT; a short table is printed last.  Usage, from the repository root:
#     SSDISTILL_DATA=gpudata sh bench/cuda/gpu_models.sh [build-gpu]
set -u
build=${1:-build-gpu}
out=${OUT:-/tmp/gpu_models}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/$build:$PWD/.devdeps/lib:${LD_LIBRARY_PATH:-}"
data=${SSDISTILL_DATA:-../shared/data}
bin="$build/ssdistill"
summary=""
line() { summary="$summary$(printf "$@")\n"; }

for d in "$data"/hf/*/; do
    [ -f "$d/reference.safetensors" ] || continue
    name=$(basename "$d")
    "$bin" check-ref --device cuda --model "$d" "$d/reference.safetensors" > "$out/check_ref_$name.log" 2>&1
    rc=$?
    worst=$(awk '$NF == "ok" || $NF == "FAIL" {print $(NF - 1)}' "$out/check_ref_$name.log" | sort -g | tail -1)
    line '%-36s rc %-3s worst rel err %s' "check-ref cuda $name" "$rc" "${worst:-?}"
done

if [ "${STAGE3:-1}" = 1 ] && [ -x "$build/bench/bench_stage3" ]; then
    timeout 400 "$build/bench/bench_stage3" ${STAGE3_ARGS:-} > "$out/bench_stage3.jsonl" 2> "$out/bench_stage3.err"
    line '%-36s rc %-3s %s' "bench_stage3" "$?" "$(cut -c1-300 "$out/bench_stage3.jsonl")"
fi

for r in ${RECIPES:-recipes/stories260k-quick.json}; do
    name=$(basename "$r" .json)
    start=$(date +%s)
    SSDISTILL_DATA="$data" timeout "${DISTILL_TIMEOUT:-480}" "$bin" distill "$r" --device cuda --out "$out/$name-cuda" \
        > "$out/distill_$name.log" 2>&1
    rc=$?
    line '%-36s rc %-3s %5s s  %s' "distill cuda $name" "$rc" "$(( $(date +%s) - start ))" \
        "$(cat "$out/$name-cuda/eval.json" 2>/dev/null | tr -d '\n' | cut -c1-160)"
    [ -f "runs/$name-cpu/eval.json" ] && line '%-36s %s' "  cpu run" "$(tr -d '\n' < "runs/$name-cpu/eval.json" | cut -c1-160)"
    cp "$out/$name-cuda/metrics.jsonl" "$out/metrics_$name.jsonl" 2>/dev/null
    rm -rf "$out/$name-cuda/ckpt"
done

echo "== tails"
for f in "$out"/distill_*.log "$out"/bench_stage3.err; do [ -f "$f" ] && { echo "-- $f"; tail -n 5 "$f"; }; done
echo "== summary"
printf "$summary"
