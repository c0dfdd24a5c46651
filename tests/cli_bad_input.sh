#!/usr/bin/env bash
# Bad input to convert and inspect: every case exits with status 2 (never a crash: 134/139)
# and the message names the file and, where there is one, the field or tensor.
set -u
bin=$1
data=${SSDISTILL_DATA:-../shared/data}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

# expect_fail CODE PATTERN -- cmd...: the exit status is exactly CODE and stderr contains PATTERN.
expect_fail() {
    local code=$1 pattern=$2
    shift 3
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ "$rc" -ne "$code" ]; then
        fail=$((fail + 1))
        echo "FAIL: exit $rc (expected $code): $*" >&2
        sed 's/^/    /' "$tmp/err" >&2
    elif ! grep -qF -- "$pattern" "$tmp/err"; then
        fail=$((fail + 1))
        echo "FAIL: stderr lacks '$pattern': $*" >&2
        sed 's/^/    /' "$tmp/err" >&2
    else
        pass=$((pass + 1))
    fi
}

# model DIR: a copy of tiny-llama-gqa to damage.
model() {
    mkdir -p "$tmp/$1"
    cp "$data/hf/tiny-llama-gqa/config.json" "$data/hf/tiny-llama-gqa/model.safetensors" "$tmp/$1/"
}

# craft FILE HEADER_JSON DATA_BYTES [HEADER_LEN]: a safetensors file made by hand.
craft() {
    python3 - "$@" <<'PY'
import struct, sys
path, header, nbytes = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
hlen = int(sys.argv[4]) if len(sys.argv) > 4 else len(header)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", hlen) + header + bytes(nbytes))
PY
}

# Truncated safetensors, in a model folder.
model trunc
size=$(stat -c %s "$tmp/trunc/model.safetensors")
head -c $((size / 2)) "$data/hf/tiny-llama-gqa/model.safetensors" >"$tmp/trunc/model.safetensors"
expect_fail 2 "$tmp/trunc/model.safetensors" -- "$bin" convert --from "$tmp/trunc" --out "$tmp/x.h5"
expect_fail 2 "past the end of the data section" -- "$bin" inspect "$tmp/trunc"
expect_fail 2 "$tmp/trunc/model.safetensors" -- "$bin" inspect "$tmp/trunc/model.safetensors"
[ -e "$tmp/x.h5" ] || [ -e "$tmp/x.h5.tmp" ] && { fail=$((fail + 1)); echo "FAIL: failed convert left a file" >&2; } || pass=$((pass + 1))

# Header length past the end of the file.
model hlen
craft "$tmp/hlen/model.safetensors" '{}' 0 4096
expect_fail 2 "$tmp/hlen/model.safetensors: header length 4096 past the end of the file" -- "$bin" convert --from "$tmp/hlen" --out "$tmp/x.h5"
expect_fail 2 "header length 4096" -- "$bin" inspect "$tmp/hlen/model.safetensors"

# Dtypes we do not read.
model f64
craft "$tmp/f64/model.safetensors" '{"model.norm.weight": {"dtype": "F64", "shape": [64], "data_offsets": [0, 512]}}' 512
expect_fail 2 "tensor 'model.norm.weight': field 'dtype': unsupported dtype 'F64'" -- "$bin" convert --from "$tmp/f64" --out "$tmp/x.h5"
craft "$tmp/weird.safetensors" '{"w": {"dtype": "ZZ9", "shape": [2], "data_offsets": [0, 2]}}' 2
expect_fail 2 "$tmp/weird.safetensors: tensor 'w': field 'dtype': unsupported dtype 'ZZ9'" -- "$bin" inspect "$tmp/weird.safetensors"
# Shape that disagrees with the byte range; header that is not JSON.
craft "$tmp/shape.safetensors" '{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}' 8
expect_fail 2 "tensor 'w': shape and dtype F32 need 12 bytes" -- "$bin" inspect "$tmp/shape.safetensors"
craft "$tmp/notjson.safetensors" '{"w": [' 0
expect_fail 2 "$tmp/notjson.safetensors: header is not valid JSON" -- "$bin" inspect "$tmp/notjson.safetensors"
# An integer tensor in a model file.
model ints
craft "$tmp/ints/model.safetensors" '{"model.embed_tokens.weight": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}' 8
expect_fail 2 "tensor 'model.embed_tokens.weight': dtype I32" -- "$bin" convert --from "$tmp/ints" --out "$tmp/x.h5"

# Malformed config.json.
model notjson
echo '{"model_type": "llama", "hidden_size": ' >"$tmp/notjson/config.json"
expect_fail 2 "$tmp/notjson/config.json: not valid JSON" -- "$bin" convert --from "$tmp/notjson" --out "$tmp/x.h5"
model wrongtype
sed -i 's/"hidden_size": 64/"hidden_size": "big"/' "$tmp/wrongtype/config.json"
expect_fail 2 "$tmp/wrongtype/config.json: field 'hidden_size': expected an integer" -- "$bin" inspect "$tmp/wrongtype"
model missingfield
sed -i '/"num_hidden_layers"/d' "$tmp/missingfield/config.json"
expect_fail 2 "$tmp/missingfield/config.json: field 'num_hidden_layers' is missing" -- "$bin" convert --from "$tmp/missingfield" --out "$tmp/x.h5"
model bert
sed -i 's/"model_type": "llama"/"model_type": "bert"/' "$tmp/bert/config.json"
expect_fail 2 "$tmp/bert/config.json: field 'model_type': unknown architecture 'bert'" -- "$bin" convert --from "$tmp/bert" --out "$tmp/x.h5"
model mistral
sed -i 's/"model_type": "llama"/"model_type": "mistral", "sliding_window": 4096/' "$tmp/mistral/config.json"
expect_fail 2 "$tmp/mistral/config.json: field 'sliding_window'" -- "$bin" convert --from "$tmp/mistral" --out "$tmp/x.h5"

# Missing files.
model nost
rm "$tmp/nost/model.safetensors"
expect_fail 2 "$tmp/nost: missing model.safetensors" -- "$bin" convert --from "$tmp/nost" --out "$tmp/x.h5"
model nocfg
rm "$tmp/nocfg/config.json"
expect_fail 2 "$tmp/nocfg: missing config.json" -- "$bin" inspect "$tmp/nocfg"
expect_fail 2 "$tmp/nothere: no such file" -- "$bin" convert --from "$tmp/nothere" --out "$tmp/x.h5"
expect_fail 2 "a bare safetensors file has no config" -- "$bin" convert --from "$data/hf/tiny-llama-gqa/model.safetensors" --out "$tmp/x.h5"

# A sharded index naming a shard that is not there.
model shard
rm "$tmp/shard/model.safetensors"
echo '{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}' >"$tmp/shard/model.safetensors.index.json"
expect_fail 2 "$tmp/shard/model-00001-of-00002.safetensors" -- "$bin" convert --from "$tmp/shard" --out "$tmp/x.h5"

# Not HDF5, under an .h5 name.
head -c 4096 /dev/urandom >"$tmp/random.h5"
expect_fail 2 "$tmp/random.h5: not an HDF5 file" -- "$bin" inspect "$tmp/random.h5"
# HDF5 signature, then garbage.
printf '\211HDF\r\n\032\n' >"$tmp/sig.h5"
head -c 100 /dev/urandom >>"$tmp/sig.h5"
expect_fail 2 "$tmp/sig.h5" -- "$bin" inspect "$tmp/sig.h5"

# Truncated llama2.c file.
head -c 100000 "$data/llama2c-stories260K/stories260K.bin" >"$tmp/cut.bin"
expect_fail 2 "$tmp/cut.bin: file is 100000 bytes but its llama2.c header" -- "$bin" convert --from "$tmp/cut.bin" --out "$tmp/x.h5"
expect_fail 2 "implies" -- "$bin" inspect "$tmp/cut.bin"
printf 'abc' >"$tmp/tiny.bin"
expect_fail 2 "$tmp/tiny.bin: file is 3 bytes" -- "$bin" inspect "$tmp/tiny.bin"

# Usage errors.
expect_fail 2 "usage: ssdistill convert" -- "$bin" convert --from "$data/hf/tiny-llama-gqa"
expect_fail 2 "--out needs a value" -- "$bin" convert --from "$data/hf/tiny-llama-gqa" --out
expect_fail 2 "unknown option --bogus" -- "$bin" convert --bogus x --from a --out b
expect_fail 2 "usage: ssdistill inspect" -- "$bin" inspect
# Output into a folder that does not exist.
expect_fail 2 "$tmp/no/dir/x.h5.tmp" -- "$bin" convert --from "$data/hf/tiny-llama-gqa" --out "$tmp/no/dir/x.h5"

echo "cli_bad_input: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
