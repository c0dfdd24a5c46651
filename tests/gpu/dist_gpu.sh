# Data parallelism on GPUs (issue 6), end to end through `ssdistill distill` (stages 1-3 on
# stories260K, --device cuda) launched by tools/sdlaunch:
#   - one GPU through the whole NCCL / ZeRO-1 path (SSDISTILL_DIST=1) gives the plain run's
#     losses at every step and its eval;
#   - a run stopped inside stage 3 on the NCCL path (sharded moments gathered into the
#     checkpoint) and resumed without it ends where the uninterrupted run ends, and on the CPU
#     close to it;
#   - stages 1 and 2 with "parallel": "layers" on one rank give the plain run's losses;
#   - with two GPUs or more: 2 ranks at the same global batch follow the 1-GPU loss curve
#     (within noise) and eval, with layers split too, and a 2-rank checkpoint resumes on one
#     GPU and back.
# Exit 77 (skipped) without a GPU.  Usage: bash tests/gpu/dist_gpu.sh path/to/ssdistill
set -u
bin=$1
here=$(cd "$(dirname "$0")/../.." && pwd)
launch="$here/tools/sdlaunch"
data=${SSDISTILL_DATA:?}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "$gpus" -ge 1 ] || { echo "skip: no GPU"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
export NCCL_NVLS_ENABLE=0

cat > "$dir/r.json" <<JSON
{"name": "dist", "teacher": "$data/hf/stories260K", "device": "cuda",
 "data": {"sample": {"tokens": 60000, "seq_len": 128, "seed": 1, "out": "$dir/sampled.bin"},
          "eval": "$data/text/tinystories_val_dev.txt"},
 "student": {"mixer": "discrete", "state_size": 8, "chunk_size": 64, "init": "attention"},
 "eval": {"tokens": 40000, "seq_len": 128, "batch": 8},
 "stages": [
  {"stage": 1, "tokens": 8192, "batch": 4, "seq_len": 128, "log_every": 1, "schedule": {"type": "constant", "lr": 2e-3}},
  {"stage": 2, "tokens": 8192, "batch": 4, "seq_len": 128, "log_every": 1, "schedule": {"type": "constant", "lr": 2e-3}},
  {"stage": 3, "tokens": 49152, "batch": 8, "seq_len": 128, "log_every": 1,
   "schedule": {"type": "wsd", "lr": 1.5e-3, "warmup_steps": 8, "min_lr": 1e-5, "decay_fraction": 0.2}}]}
JSON
# stages: 16 + 16 + 48 steps; --stop-after 40 stops in stage 3 at its step 8

# compare A B REL: every logged loss of run B within REL (relative) of run A's, and the eval ppl
compare() {
    python3 - "$dir/$1" "$dir/$2" "$3" <<'PY'
import json, sys
def load(d):
    rows, ev = {}, None
    for line in open(d + "/metrics.jsonl"):
        j = json.loads(line)
        if j.get("event") == "eval": continue
        rows[(j["stage_index"], j["step"])] = j["loss"]
    ev = json.load(open(d + "/eval.json"))
    return rows, ev
a, ea = load(sys.argv[1]); b, eb = load(sys.argv[2]); rel = float(sys.argv[3])
common = sorted(set(a) & set(b))
worst = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in common) if common else float("inf")
pa, pb = ea["ppl"], eb["ppl"]
first = next((k for k in common if abs(a[k] - b[k]) > rel * max(abs(a[k]), 1e-12)), None)
print("  %d steps compared, worst loss difference %.3g (relative), ppl %.6f vs %.6f%s" % (len(common), worst, pa, pb,
      ", first beyond %g at stage index %d step %d" % ((rel,) + first) if first else ""))
sys.exit(0 if len(common) >= 80 and worst <= rel and abs(pa - pb) <= rel * pa else 1)
PY
}

"$bin" distill "$dir/r.json" --out "$dir/plain" > "$dir/plain.log" 2>&1
check "plain 1-GPU run" '[ $? -eq 0 ]'
SSDISTILL_DIST=1 "$launch" -n 1 "$bin" distill "$dir/r.json" --out "$dir/w1" > "$dir/w1.log" 2>&1
check "1 rank through NCCL + ZeRO-1" '[ $? -eq 0 ]'
check "1 rank: the plain run's losses and eval" 'compare plain w1 1e-5'

# stages 1 and 2 with their layers split over the ranks
sed 's/"log_every": 1, "schedule": {"type": "constant"/"log_every": 1, "parallel": "layers", "schedule": {"type": "constant"/' \
    "$dir/r.json" > "$dir/layers.json"
check "layer-split recipe" 'grep -c "\"parallel\": \"layers\"" "$dir/layers.json" | grep -q 2'
SSDISTILL_DIST=1 "$launch" -n 1 "$bin" distill "$dir/layers.json" --out "$dir/l1" > "$dir/l1.log" 2>&1
check "1 rank, layers split: the plain run's losses and eval" '[ $? -eq 0 ] && compare plain l1 1e-5'

SSDISTILL_DIST=1 "$launch" -n 1 "$bin" distill "$dir/r.json" --out "$dir/rs" --stop-after 40 > "$dir/rs1.log" 2>&1
check "NCCL run stopped in stage 3" '[ $? -eq 0 ] && [ -s "$dir/rs/ckpt/latest.h5" ]'
"$bin" distill "$dir/r.json" --out "$dir/rs" --resume > "$dir/rs2.log" 2>&1
check "resumed without NCCL" '[ $? -eq 0 ]'
check "resumed run = uninterrupted run" 'compare plain rs 1e-4'
SSDISTILL_DIST=1 "$launch" -n 1 "$bin" distill "$dir/r.json" --out "$dir/rc" --stop-after 40 > "$dir/rc1.log" 2>&1
"$bin" distill "$dir/r.json" --out "$dir/rc" --resume --device cpu > "$dir/rc2.log" 2>&1
check "NCCL checkpoint resumed on the CPU (fp32: within the GPU/CPU difference)" '[ $? -eq 0 ] && compare plain rc 5e-2'

if [ "$gpus" -ge 2 ]; then
    "$launch" -n 2 "$bin" distill "$dir/r.json" --out "$dir/w2" > "$dir/w2.log" 2>&1
    check "2 ranks" '[ $? -eq 0 ]'
    check "2 ranks at the same global batch: the 1-GPU losses and eval within noise" 'compare plain w2 3e-2'
    "$launch" -n 2 "$bin" distill "$dir/layers.json" --out "$dir/l2" > "$dir/l2.log" 2>&1
    check "2 ranks, layers split in stages 1-2: the 1-GPU losses and eval within noise" '[ $? -eq 0 ] && compare plain l2 3e-2'
    "$launch" -n 2 "$bin" distill "$dir/r.json" --out "$dir/x" --stop-after 40 > "$dir/x1.log" 2>&1
    "$bin" distill "$dir/r.json" --out "$dir/x" --resume > "$dir/x2.log" 2>&1
    check "2-rank checkpoint resumed on 1 GPU" '[ $? -eq 0 ] && compare plain x 3e-2'
    "$bin" distill "$dir/r.json" --out "$dir/y" --stop-after 40 > "$dir/y1.log" 2>&1
    "$launch" -n 2 "$bin" distill "$dir/r.json" --out "$dir/y" --resume > "$dir/y2.log" 2>&1
    check "1-GPU checkpoint resumed on 2 ranks" '[ $? -eq 0 ] && compare plain y 3e-2'
else
    echo "skip: the 2-rank checks need 2 GPUs (this machine has $gpus)"
fi
[ $fail -eq 0 ] || for f in "$dir"/*.log; do echo "--- $f"; tail -n 15 "$f"; done
exit $fail
