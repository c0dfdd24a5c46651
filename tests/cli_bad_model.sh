#!/usr/bin/env bash
# A checkpoint whose tensors disagree with its config: a missing tensor, a shape that is not
# the config's, a dtype a model cannot hold.  convert and check-ref both exit 2 and name the
# file and the tensor; nothing crashes.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
src=$data/hf/tiny-llama-gqa
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

# Rewrites the safetensors header of $1 into $2 with the python expression $3 applied to the
# parsed header dict h (data section unchanged).
edit_header() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
src, dst, expr = sys.argv[1:]
raw = open(src, 'rb').read()
n = struct.unpack('<Q', raw[:8])[0]
h = json.loads(raw[8:8 + n])
exec(expr)
hb = json.dumps(h).encode()
hb += b' ' * ((8 - len(hb) % 8) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(hb)) + hb + raw[8 + n:])
PY
}

# expect_fail NAME PATTERN... -- command: exit status 2 and every pattern in stderr.
expect_fail() {
  local name=$1; shift
  local pats=()
  while [ "$1" != "--" ]; do pats+=("$1"); shift; done
  shift
  local err rc
  err=$("$@" 2>&1 >/dev/null); rc=$?
  local ok=1
  [ "$rc" -eq 2 ] || ok=0
  for p in "${pats[@]}"; do case "$err" in *"$p"*) ;; *) ok=0 ;; esac; done
  if [ $ok -eq 1 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $name: exit $rc, stderr: $err"; fi
}

case_dir() { # case_dir NAME EXPR: a copy of the model folder with its header edited
  mkdir -p "$tmp/$1"
  cp "$src/config.json" "$tmp/$1/"
  edit_header "$src/model.safetensors" "$tmp/$1/model.safetensors" "$2"
}

case_dir missing "del h['model.layers.1.mlp.up_proj.weight']"
case_dir shape "h['model.layers.0.mlp.down_proj.weight']['shape'] = [176, 64]"
case_dir dtype "h['model.norm.weight']['dtype'] = 'I32'"

for cmd in convert check-ref; do
  run() { if [ $cmd = convert ]; then "$bin" convert --from "$1" --out "$tmp/out.h5"; else "$bin" check-ref --model "$1" "$src/reference.safetensors"; fi; }
  expect_fail "$cmd missing tensor" "model.safetensors" "model.layers.1.mlp.up_proj.weight" -- run "$tmp/missing"
  expect_fail "$cmd wrong shape" "model.safetensors" "model.layers.0.mlp.down_proj.weight" "shape" -- run "$tmp/shape"
  expect_fail "$cmd wrong dtype" "model.safetensors" "model.norm.weight" -- run "$tmp/dtype"
done
[ ! -e "$tmp/out.h5" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: a failed convert left $tmp/out.h5"; }
[ ! -e "$tmp/out.h5.tmp" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: a failed convert left out.h5.tmp"; }

# A reference whose logits do not fit the model, and a model that is not a teacher.
edit_header "$src/reference.safetensors" "$tmp/ref.safetensors" "h['logits']['shape'] = [2, 64, 5, 64]"
expect_fail "reference shape" "ref.safetensors" "logits" -- "$bin" check-ref --model "$src" "$tmp/ref.safetensors"
expect_fail "phi is not a teacher yet" "phi" -- "$bin" check-ref --model "$data/hf/tiny-phi" "$data/hf/tiny-phi/reference.safetensors"

echo "cli_bad_model: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
