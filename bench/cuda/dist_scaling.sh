#!/bin/sh
# Data-parallel scaling of the stage-3 step (issue 6): bench_stage3 at the issue 5 shapes
# (random Llama-3.2-1B-shaped teacher, Llamba-1B-shaped student, B 8 x T 2048 per GPU, AdamW)
# on 1, 2, 4 and 8 GPUs (as many as the machine has), one process per GPU through
# tools/sdlaunch, gradients reduced in buckets during the backward and AdamW sharded (ZeRO-1).
# One GPU runs twice: without NCCL, and through the whole data-parallel path with one rank
# (SSDISTILL_DIST=1), which prices the path itself.  Weak scaling: the global batch grows with
# the GPUs; efficiency = tokens/s on n GPUs / (n x tokens/s on one through the same path).
# Prints every run's JSON line, then one {"bench":"stage3_scaling",...} line and a table.
#   sh bench/cuda/dist_scaling.sh [BUILD_DIR]    (STEPS=5, MAX_GPUS=8)
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}
steps=${STEPS:-5}
max=${MAX_GPUS:-8}
launch="$here/tools/sdlaunch"
bench="$build/bench/bench_stage3"
[ -x "$bench" ] || { echo "dist_scaling: $bench not built" >&2; exit 1; }
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "$gpus" -ge 1 ] || { echo "dist_scaling: no GPU" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}

one() { # name, then the command
    name=$1
    shift
    if SSDISTILL_NCCL_ID="$work/$name.id" "$@" --steps "$steps" >"$work/$name.json" 2>"$work/$name.log"; then
        cat "$work/$name.json"
    else
        echo "dist_scaling: $name failed:" >&2
        tail -5 "$work/$name.log" >&2
    fi
}

one plain "$bench"
one w1 env SSDISTILL_DIST=1 "$launch" -n 1 "$bench"
for n in 2 4 8; do
    [ "$n" -le "$gpus" ] && [ "$n" -le "$max" ] && one "w$n" "$launch" -n "$n" "$bench"
done
cat "$work"/*.json | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.startswith("{")]
plain = [r for r in runs if not r["dist"]]
dist = sorted((r for r in runs if r["dist"]), key=lambda r: r["world"])
base = next((r for r in dist if r["world"] == 1), None)
rows = []
for r in dist:
    eff = r["tokens_per_s"] / (r["world"] * base["tokens_per_s"]) if base else None
    rows.append({"gpus": r["world"], "tokens_per_s": r["tokens_per_s"], "ms_per_step": r["ms_per_step"],
                 "peak_gib": r["peak_gib"], "efficiency": round(eff, 4) if eff else None})
out = {"bench": "stage3_scaling", "batch_per_gpu": runs[0]["batch_per_gpu"] if runs else None,
       "seq": runs[0]["seq"] if runs else None, "plain_1gpu_tokens_per_s": plain[0]["tokens_per_s"] if plain else None,
       "runs": rows, "goal": {"efficiency_8gpu": 0.9}}
print(json.dumps(out))
print("%5s %12s %10s %9s %10s" % ("gpus", "tokens/s", "ms/step", "GiB", "efficiency"))
if plain:
    print("%5s %12.0f %10.1f %9.1f %10s" % ("1*", plain[0]["tokens_per_s"], plain[0]["ms_per_step"], plain[0]["peak_gib"], "(no NCCL)"))
for r in rows:
    print("%5d %12.0f %10.1f %9.1f %10s" % (r["gpus"], r["tokens_per_s"], r["ms_per_step"], r["peak_gib"],
                                         "%.3f" % r["efficiency"] if r["efficiency"] else "-"))
'
