#!/usr/bin/env bash
# convert every Llama-family HF folder and the llama2.c file to a checkpoint, then inspect the
# sources, the checkpoints and a bare safetensors file: exit 0 and a table naming tensors.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

# run_ok NAME PATTERN -- cmd...: exit 0 and stdout contains PATTERN.
run_ok() {
    local name=$1 pattern=$2
    shift 3
    local out rc
    out=$("$@" 2>"$tmp/err")
    rc=$?
    if [ "$rc" -ne 0 ]; then bad "$name: exit $rc: $(cat "$tmp/err")"; return; fi
    if ! grep -qF -- "$pattern" <<<"$out"; then bad "$name: output lacks '$pattern'"; return; fi
    ok
}

for m in stories260K tiny-llama-gqa tiny-llama-bf16 tiny-qwen2; do
    run_ok "convert $m" "wrote $tmp/$m.h5" -- "$bin" convert --from "$data/hf/$m" --out "$tmp/$m.h5"
    [ -f "$tmp/$m.h5.tmp" ] && bad "convert $m left $m.h5.tmp behind" || ok
    run_ok "inspect $m.h5" "model.layers.1.self_attn.q_proj.weight" -- "$bin" inspect "$tmp/$m.h5"
    run_ok "inspect $m dir" "model.embed_tokens.weight" -- "$bin" inspect "$data/hf/$m"
    run_ok "inspect $m.h5 total" "total: " -- "$bin" inspect "$tmp/$m.h5"
done
run_ok "inspect qwen2 bias" "model.layers.0.self_attn.q_proj.bias" -- "$bin" inspect "$tmp/tiny-qwen2.h5"
run_ok "inspect qwen2 config" '"model_type":	"qwen2"' -- "$bin" inspect "$tmp/tiny-qwen2.h5"

bin_file=$data/llama2c-stories260K/stories260K.bin
run_ok "convert llama2.c" "47 tensors, 260032 parameters" -- "$bin" convert --from "$bin_file" --out "$tmp/l2c.h5"
run_ok "inspect llama2.c .bin" "model.layers.4.mlp.down_proj.weight" -- "$bin" inspect "$bin_file"
run_ok "inspect llama2.c .h5" "model.layers.4.self_attn.k_proj.weight" -- "$bin" inspect "$tmp/l2c.h5"
run_ok "inspect safetensors" "BF16" -- "$bin" inspect "$data/hf/tiny-llama-bf16/model.safetensors"
run_ok "inspect safetensors metadata" "metadata: " -- "$bin" inspect "$data/hf/tiny-llama-bf16/model.safetensors"
run_ok "inspect phi" "model.layers.0.mlp.fc1.weight" -- "$bin" inspect "$data/hf/tiny-phi"
run_ok "inspect reference" "input_ids" -- "$bin" inspect "$data/hf/stories260K/reference.safetensors"

# The llama2.c and HF conversions of stories260K hold the same tensor table.
"$bin" inspect "$tmp/l2c.h5" | grep '^model\.' | sort >"$tmp/a"
"$bin" inspect "$tmp/stories260K.h5" | grep '^model\.' | sort >"$tmp/b"
if cmp -s "$tmp/a" "$tmp/b" && [ -s "$tmp/a" ]; then ok; else bad "llama2.c and HF tables differ"; fi

echo "cli_convert: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
