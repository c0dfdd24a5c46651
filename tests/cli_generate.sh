#!/usr/bin/env bash
# Greedy generation from BOS reproduces the sample quoted in shared/data/README.md, from the
# llama2.c file and from the HF directory; sampling is reproducible for a fixed seed.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
tok=$data/tokenizers/tok512/tokenizer.json
want="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high"
pass=0 fail=0
check() { if [ "$2" = "$3" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); printf 'FAIL %s:\n  got:  %s\n  want: %s\n' "$1" "$2" "$3"; fi; }

for model in "$data/llama2c-stories260K/stories260K.bin" "$data/hf/stories260K"; do
  got=$("$bin" generate --model "$model" --tokenizer "$tok" --greedy --tokens 60 2>/dev/null)
  check "greedy sample from $model" "$got" "$want"
done

# A prompt is printed back and continued; sampling with the same seed gives the same text.
got=$("$bin" generate --model "$data/hf/stories260K" --tokenizer "$tok" --prompt "Once upon a time" --greedy --tokens 5 2>/dev/null)
check "prompt is continued" "${got:0:16}" "Once upon a time"
a=$("$bin" generate --model "$data/hf/stories260K" --tokenizer "$tok" --temperature 0.8 --top-p 0.9 --seed 7 --tokens 40 2>/dev/null)
b=$("$bin" generate --model "$data/hf/stories260K" --tokenizer "$tok" --temperature 0.8 --top-p 0.9 --seed 7 --tokens 40 2>/dev/null)
check "same seed, same sample" "$a" "$b"
[ -n "$a" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: empty sample"; }

"$bin" generate --model "$data/hf/stories260K" --tokenizer "$tok" --temperature 0 --tokens 5 >/dev/null 2>&1
check "temperature 0 without --greedy is refused" "$?" "2"

echo "cli_generate: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
