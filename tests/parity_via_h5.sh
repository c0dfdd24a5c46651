#!/usr/bin/env bash
# convert an HF directory to our HDF5 checkpoint, then check-ref the checkpoint.
set -euo pipefail
bin=$1 dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" convert --from "$dir" --out "$tmp/teacher.h5"
"$bin" check-ref --model "$tmp/teacher.h5" "$dir/reference.safetensors"
