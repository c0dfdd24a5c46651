# `ssdistill distill`: SIGINT writes a checkpoint and exits 0, --resume continues from it,
# the run directory holds what DESIGN.md section 6 lists, and bad recipes exit 2 naming the
# key.  Usage: bash cli_distill.sh path/to/ssdistill (SSDISTILL_DATA set by ctest).
set -u
bin=$1
data=${SSDISTILL_DATA:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

cat > "$dir/r.json" <<EOF
{"name": "cli", "teacher": "$data/hf/stories260K",
 "data": {"sample": {"tokens": 4000, "seq_len": 64, "out": "$dir/sampled.bin"}, "eval": "$data/text/tinystories_val_dev.txt"},
 "student": {"mixer": "discrete", "state_size": 8, "chunk_size": 16},
 "threads": 1, "eval": {"tokens": 256, "seq_len": 64, "batch": 2},
 "stages": [{"stage": 3, "tokens": 100000000, "batch": 2, "seq_len": 32, "log_every": 1,
             "schedule": {"type": "constant", "lr": 1e-3}}]}
EOF

# SIGINT once steps are being logged
"$bin" distill "$dir/r.json" --out "$dir/run" > "$dir/out.txt" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    [ -s "$dir/run/metrics.jsonl" ] && [ "$(wc -l < "$dir/run/metrics.jsonl")" -ge 3 ] && break
    sleep 0.1
done
kill -INT $pid
wait $pid
rc=$?
check "SIGINT exits 0 (rc $rc)" '[ $rc -eq 0 ]'
check "SIGINT says where the checkpoint is" 'grep -q "resume with --resume" "$dir/out.txt"'
check "checkpoint written" '[ -s "$dir/run/ckpt/latest.h5" ] && [ ! -e "$dir/run/ckpt/latest.h5.tmp" ]'
check "recipe.json written" 'grep -q "\"stages\"" "$dir/run/recipe.json"'
steps=$(wc -l < "$dir/run/metrics.jsonl")

"$bin" distill "$dir/r.json" --out "$dir/run" --resume --stop-after 2 > "$dir/out2.txt" 2>&1
rc=$?
check "resume runs 2 more steps and exits 0 (rc $rc)" '[ $rc -eq 0 ] && [ "$(wc -l < "$dir/run/metrics.jsonl")" -eq $((steps + 2)) ]'
check "the resumed steps continue the count" "tail -n 1 \"\$dir/run/metrics.jsonl\" | grep -q '\"step\":$((steps + 2)),'"

# bad recipes: exit 2, the key named
sed 's/"log_every"/"log_evry"/' "$dir/r.json" > "$dir/bad.json"
"$bin" distill "$dir/bad.json" --out "$dir/bad" > "$dir/bad.txt" 2>&1
rc=$?
check "unknown key exits 2 (rc $rc)" '[ $rc -eq 2 ]'
check "unknown key named with a suggestion" 'grep -q "log_evry" "$dir/bad.txt" && grep -q "log_every" "$dir/bad.txt"'
sed "s|$data/hf/stories260K|$dir/nowhere|" "$dir/r.json" > "$dir/bad2.json"
"$bin" distill "$dir/bad2.json" --out "$dir/bad2" > "$dir/bad2.txt" 2>&1
rc=$?
check "missing teacher exits 2 naming it (rc $rc)" '[ $rc -eq 2 ] && grep -q "nowhere" "$dir/bad2.txt"'
"$bin" distill "$dir/r.json" --out "$dir/fresh" --resume > "$dir/bad3.txt" 2>&1
rc=$?
check "resume without a checkpoint exits 2 (rc $rc)" '[ $rc -eq 2 ] && grep -q "nothing to resume" "$dir/bad3.txt"'
[ $fail -eq 0 ] || { echo "--- output"; cat "$dir/out.txt" "$dir/out2.txt" "$dir/bad.txt" "$dir/bad2.txt" "$dir/bad3.txt"; }
exit $fail
