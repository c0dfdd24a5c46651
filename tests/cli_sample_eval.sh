#!/usr/bin/env bash
# sample: the same seed twice gives identical shards, ids below the vocabulary, EOS between
# documents; eval: stories260K against itself on the TinyStories dev text gives KL 0 and
# top-1 1 as one JSON object, reads a sampled shard directly, writes --out atomically; bad
# arguments exit 2.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
teacher=$data/hf/stories260K
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() { if [ "$2" = "$3" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); printf 'FAIL %s:\n  got:  %s\n  want: %s\n' "$1" "$2" "$3"; fi; }

"$bin" sample --teacher "$teacher" --out "$tmp/a.bin" --tokens 20000 --seed 5 2>"$tmp/err"
check "sample exits 0" "$?" "0"
grep -o 'tokens/s' "$tmp/err" >/dev/null; check "sample prints its speed" "$?" "0"
cat "$tmp/err"
"$bin" sample --teacher "$teacher" --out "$tmp/b.bin" --tokens 20000 --seed 5 2>/dev/null
cmp -s "$tmp/a.bin" "$tmp/b.bin"; check "same seed, same shard" "$?" "0"
"$bin" sample --teacher "$teacher" --out "$tmp/c.bin" --tokens 20000 --seed 6 2>/dev/null
cmp -s "$tmp/a.bin" "$tmp/c.bin"; check "another seed, another shard" "$?" "1"
[ ! -e "$tmp/a.bin.tmp" ]; check "no temporary file left" "$?" "0"
got=$(python3 - "$tmp/a.bin" <<'PY'
import array, struct, sys
d = open(sys.argv[1], "rb").read()
h = struct.unpack("<256i", d[:1024])
t = array.array("H" if h[5] == 2 else "I", d[1024:])
runs, run = [], 0
for x in t:
    if x == h[6]:
        runs.append(run); run = 0
    else:
        run += 1
print(h[2] == len(t) == 20000, max(t) < h[4] == 512, h[6] == 2, t[-1] == 2, len(runs) > 20, max(runs) <= 255)
PY
)
check "shard: count, ids < vocab, EOS id, ends in EOS, documents, lengths" "$got" "True True True True True True"

out=$("$bin" eval --model "$teacher" --teacher "$teacher" --data "$data/text/tinystories_val_dev.txt" --tokens 8192 --out "$tmp/e.json" 2>/dev/null)
check "eval exits 0" "$?" "0"
echo "$out"
got=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["kl"] == 0, r["top1"] == 1, r["ppl"] == r["teacher_ppl"], 2 < r["ppl"] < 12, r["tokens"] == 8192 // 256 * 255)' "$out")
check "eval against itself: kl 0, top1 1, ppl" "$got" "True True True True True"
check "--out holds the same JSON" "$(cat "$tmp/e.json")" "$out"

out=$("$bin" eval --model "$teacher" --data "$tmp/a.bin" --seq-len 128 2>/dev/null)
got=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["kl"] is None, r["teacher_ppl"] is None, 1 < r["ppl"] < 12)' "$out")
check "eval of a shard, no teacher" "$got" "True True True"

"$bin" eval --model "$teacher" --data "$data/text/tinystories_val_dev.txt" --seq-len 1 >/dev/null 2>&1
check "--seq-len 1 refused" "$?" "2"
"$bin" eval --model "$teacher" --data "$tmp/missing.txt" >/dev/null 2>&1
check "missing data refused" "$?" "2"
"$bin" eval --model "$data/llama2c-stories260K/stories260K.bin" --data "$data/text/tinystories_val_dev.txt" >/dev/null 2>"$tmp/err"
check "text without a tokenizer beside the model refused" "$?" "2"
grep -q -- '--tokenizer' "$tmp/err"; check "the message says --tokenizer" "$?" "0"
"$bin" sample --teacher "$teacher" --out "$tmp/d.bin" --tokens 100 --seq-len 4096 >/dev/null 2>&1
check "--seq-len past the teacher's positions refused" "$?" "2"
"$bin" sample --teacher "$teacher" --out "$tmp/d.bin" --tokens 100 --top-p 0 >/dev/null 2>&1
check "--top-p 0 refused" "$?" "2"

echo "cli_sample_eval: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
