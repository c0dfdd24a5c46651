#!/usr/bin/env bash
# export: the real HF Mamba-2 checkpoint exported as mamba_ssm and hf-mamba2 still matches
# transformers' outputs through check-ref (the exported folders load back); formats that
# cannot hold a model, teachers and unknown formats are refused with exit 2.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
m2=$data/hf/tiny-mamba2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
check() { if [ "$2" = "$3" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); printf 'FAIL %s:\n  got:  %s\n  want: %s\n' "$1" "$2" "$3"; fi; }

for f in mamba_ssm hf-mamba2; do
  "$bin" export --model "$m2" --format $f --out "$tmp/$f" --tokenizer-from "$data/hf/stories260K" 2>/dev/null
  check "export tiny-mamba2 as $f" "$?" "0"
  "$bin" check-ref --model "$tmp/$f" "$m2/reference.safetensors" >/dev/null
  check "check-ref on the $f folder" "$?" "0"
  [ -f "$tmp/$f/tokenizer.json" ] && [ -f "$tmp/$f/tokenizer_config.json" ]
  check "$f: tokenizer files copied" "$?" "0"
done
got=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(sorted(c), c["ssm_cfg"]["layer"], c["d_intermediate"])' "$tmp/mamba_ssm/config.json")
check "mamba_ssm config.json holds MambaConfig's fields only" "$got" "['attn_cfg', 'attn_layer_idx', 'd_intermediate', 'd_model', 'fused_add_norm', 'n_layer', 'pad_vocab_size_multiple', 'residual_in_fp32', 'rms_norm', 'ssm_cfg', 'tie_embeddings', 'vocab_size'] Mamba2 0"

"$bin" export --model "$m2" --format llamba --out "$tmp/l" 2>"$tmp/err"
check "llamba refuses a standard-mixer model" "$?" "2"
grep -q "format that can: hf-mamba2 or mamba_ssm" "$tmp/err"; check "the refusal names the formats that can" "$?" "0"
[ ! -e "$tmp/l" ]; check "nothing written on refusal" "$?" "0"
"$bin" export --model "$data/hf/stories260K" --format mamba_ssm --out "$tmp/t" >/dev/null 2>&1
check "a teacher is refused" "$?" "2"
"$bin" export --model "$m2" --format onnx --out "$tmp/o" >/dev/null 2>&1
check "an unknown format is refused" "$?" "2"

echo "cli_export: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
