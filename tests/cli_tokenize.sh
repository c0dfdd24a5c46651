#!/usr/bin/env bash
# ssdistill encode / tokenize: ids equal the tokenizers library's, shards well formed,
# invalid UTF-8 refused with exit 2 and no shard left behind.
# Usage: bash tests/cli_tokenize.sh path/to/ssdistill   (SSDISTILL_DATA = shared data)
BIN=${1:?usage: cli_tokenize.sh path/to/ssdistill}
DATA=${SSDISTILL_DATA:-../shared/data}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

# encode: the first 40 expected texts of each tokenizer, one JSON string per line
for t in tok512 llama2 gpt2; do
    dir=$DATA/tokenizers/$t
    python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))
for x in e["texts"][:40]: print(json.dumps(x))' "$dir/expected.dev.json" > "$TMP/in.txt"
    if "$BIN" encode --tokenizer "$dir/tokenizer.json" < "$TMP/in.txt" > "$TMP/out.txt"; then ok; else bad "$t: encode failed"; fi
    if python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))
got = [json.loads(l) for l in open(sys.argv[2])]
want = e["ids"][:40]
bad = [i for i in range(len(want)) if i >= len(got) or got[i] != want[i]]
sys.exit(1 if bad or len(got) != len(want) else 0)' "$dir/expected.dev.json" "$TMP/out.txt"; then ok; else bad "$t: encode ids differ"; fi
done

# encode: a line that is not a JSON string names its line number
printf '"ok"\nnot json\n' | "$BIN" encode --tokenizer "$DATA/tokenizers/gpt2/tokenizer.json" > /dev/null 2> "$TMP/err"
rc=$?
if [ $rc -eq 2 ] && grep -q "line 2" "$TMP/err"; then ok; else bad "bad encode line: rc $rc: $(cat "$TMP/err")"; fi

# shard header: magic, version, count, vocab, dtype, eos; prints "ntokens eos_count"
check_shard() { # shard vocab dtype eos docs
    python3 -c '
import struct, sys
path, vocab, dtype, eos, docs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
b = open(path, "rb").read()
h = struct.unpack("<256i", b[:1024])
n = h[2] + (h[3] << 31)
assert h[0] == 20240520 and h[1] == 1, "magic/version"
assert h[4] == vocab and h[5] == dtype and h[6] == eos, "header %r" % (h[:7],)
assert len(b) == 1024 + n * dtype, "size"
toks = struct.unpack("<%d%s" % (n, "H" if dtype == 2 else "I"), b[1024:])
assert toks.count(eos) == docs, "eos count %d != docs %d" % (toks.count(eos), docs)
assert toks[-1] == eos
' "$@"
}

# tokenize the TinyStories dev text with tok512: one EOS per story
TS=$DATA/text/tinystories_val_dev.txt
ndocs=$(python3 -c '
import re, sys
t = open(sys.argv[1], encoding="utf-8").read()
print(sum(1 for d in re.split(r"\n(?:\r?\n)+", t) if d.strip("\n")))' "$TS")
if "$BIN" tokenize --tokenizer "$DATA/tokenizers/tok512/tokenizer.json" --in "$TS" --out "$TMP/ts.bin" > "$TMP/sum.txt"; then ok; else bad "tokenize tinystories failed"; fi
if check_shard "$TMP/ts.bin" 512 2 2 "$ndocs"; then ok; else bad "tinystories shard"; fi
if grep -q "$ndocs documents" "$TMP/sum.txt"; then ok; else bad "summary: $(cat "$TMP/sum.txt")"; fi

# the same with gpt2 and an explicit vocab size above 65536: uint32 tokens
if "$BIN" tokenize --tokenizer "$DATA/tokenizers/gpt2/tokenizer.json" --in "$TS" --out "$TMP/ts32.bin" --vocab-size 70000 > /dev/null; then ok; else bad "tokenize gpt2 failed"; fi
if check_shard "$TMP/ts32.bin" 70000 4 50256 "$ndocs"; then ok; else bad "gpt2 uint32 shard"; fi

# a small JSONL: the shard holds exactly encode's ids + EOS per document
printf '{"text": "Hello world"}\n\n{"text": "caf\\u00e9 \\ud83d\\ude00", "id": 2}\n{"text": "<s>x <unk>"}\n' > "$TMP/small.jsonl"
if "$BIN" tokenize --tokenizer "$DATA/tokenizers/tok512/tokenizer.json" --in "$TMP/small.jsonl" --out "$TMP/small.bin" > /dev/null; then ok; else bad "tokenize jsonl failed"; fi
if check_shard "$TMP/small.bin" 512 2 2 3; then ok; else bad "jsonl shard"; fi
python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if l.strip(): print(json.dumps(json.loads(l)["text"]))' "$TMP/small.jsonl" > "$TMP/small.txt"
"$BIN" encode --tokenizer "$DATA/tokenizers/tok512/tokenizer.json" < "$TMP/small.txt" > "$TMP/small.ids"
if python3 -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<i", b[8:12])[0]
toks = list(struct.unpack("<%dH" % n, b[1024:]))
want = []
for l in open(sys.argv[2]): want += json.loads(l) + [2]
sys.exit(0 if toks == want else 1)' "$TMP/small.bin" "$TMP/small.ids"; then ok; else bad "jsonl shard differs from encode"; fi

# JSONL text with an escaped U+0000 and a "text" look-alike in another member keeps every byte
printf '{"id": {"a": [1, "x\\"}"]}, "b": "t\\"ext", "text": "a\\u0000b"}\n' > "$TMP/nul.jsonl"
if "$BIN" tokenize --tokenizer "$DATA/tokenizers/gpt2/tokenizer.json" --in "$TMP/nul.jsonl" --out "$TMP/nul.bin" > /dev/null &&
    python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read()
sys.exit(0 if struct.unpack("<4H", b[1024:]) == (64, 188, 65, 50256) else 1)' "$TMP/nul.bin"; then ok; else bad "jsonl with U+0000"; fi

# invalid UTF-8: exit 2, the file name and byte offset in the message, no shard left
printf 'good text\n\nbad \xff text\n' > "$TMP/bad.txt"
"$BIN" tokenize --tokenizer "$DATA/tokenizers/tok512/tokenizer.json" --in "$TMP/bad.txt" --out "$TMP/bad.bin" > /dev/null 2> "$TMP/err"
rc=$?
if [ $rc -eq 2 ] && grep -q "bad.txt" "$TMP/err" && grep -q "offset 15" "$TMP/err"; then ok; else bad "invalid UTF-8: rc $rc: $(cat "$TMP/err")"; fi
if [ ! -e "$TMP/bad.bin" ] && [ ! -e "$TMP/bad.bin.tmp" ]; then ok; else bad "a shard was left behind"; fi

# Split pre-tokenizers (GPT-2 as Split, Llama-3, Qwen2) on the gpt2 vocabulary against a
# reference built from Python's `regex` module and a plain rank-order BPE (skipped without it).
if python3 -c 'import regex' 2> /dev/null; then
    mkdir -p "$TMP/rx"
    cat > "$TMP/regex_ref.py" <<'PYEOF'
# Reference for the Llama-3 / Qwen2 / GPT-2 Split pre-tokenizers: builds tokenizer.json
# variants of the gpt2 vocabulary and the ids a regex split + byte-level BPE gives.
import json, sys
import regex
src, out_dir = sys.argv[1], sys.argv[2]
gpt2 = json.load(open(src + "/tokenizer.json"))
texts = json.load(open(src + "/expected.dev.json"))["texts"]
texts += ["HELLO'LL be 'S 'Re", "a\r\n\r\n  b\n\n\tc  ", "12345678 x1y22", "  ?!  \n", "x \u00a0\u2003y", "dont'VE", "tab\t\tend\t"]
PATS = {
    "gpt2split": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
b2u = dict(zip(bs, map(chr, cs)))
vocab = gpt2["model"]["vocab"]
ranks = {tuple(m): i for i, m in enumerate(gpt2["model"]["merges"])}
def bpe(word):
    syms = list(word)
    while len(syms) > 1:
        best = min(range(len(syms) - 1), key=lambda i: (ranks.get((syms[i], syms[i + 1]), 1 << 30), i))
        if (syms[best], syms[best + 1]) not in ranks: break
        syms[best:best + 2] = [syms[best] + syms[best + 1]]
    return [vocab[s] for s in syms]
with open(out_dir + "/texts.jsonl", "w") as f:
    for t in texts: f.write(json.dumps(t) + "\n")
for name, pat in PATS.items():
    tj = dict(gpt2)
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    json.dump(tj, open(out_dir + "/" + name + ".json", "w"))
    with open(out_dir + "/" + name + ".ids", "w") as f:
        for t in texts:
            ids = []
            for part in regex.split("(<\\|endoftext\\|>)", t):
                if part == "<|endoftext|>": ids.append(50256); continue
                for m in regex.finditer(pat, part):
                    ids += bpe("".join(b2u[b] for b in m.group().encode()))
            f.write(json.dumps(ids, separators=(",", ":")) + "\n")
PYEOF
    python3 "$TMP/regex_ref.py" "$DATA/tokenizers/gpt2" "$TMP/rx"
    # the reference itself agrees with the tokenizers library on the gpt2 expected ids
    if python3 -c '
import json, sys
w = json.load(open(sys.argv[1]))["ids"]
r = [json.loads(l) for l in open(sys.argv[2])][:len(w)]
sys.exit(0 if r == w else 1)' "$DATA/tokenizers/gpt2/expected.dev.json" "$TMP/rx/gpt2split.ids"; then ok; else bad "regex reference disagrees with gpt2 expected ids"; fi
    for n in gpt2split llama3 qwen2; do
        if "$BIN" encode --tokenizer "$TMP/rx/$n.json" < "$TMP/rx/texts.jsonl" > "$TMP/rx/$n.got" &&
            cmp -s "$TMP/rx/$n.got" "$TMP/rx/$n.ids"; then ok; else bad "$n split pre-tokenizer ids differ from the reference"; fi
    done
    # an unknown Split regex is refused, naming the file and field
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1])); j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"
json.dump(j, open(sys.argv[2], "w"))' "$TMP/rx/llama3.json" "$TMP/rx/unknown.json"
    echo '"x"' | "$BIN" encode --tokenizer "$TMP/rx/unknown.json" > /dev/null 2> "$TMP/err"
    rc=$?
    if [ $rc -eq 2 ] && grep -q "unknown.json" "$TMP/err" && grep -q "pre_tokenizer" "$TMP/err"; then ok; else bad "unknown regex: rc $rc: $(cat "$TMP/err")"; fi
else
    echo "skip: python3 regex module not installed (Split pre-tokenizer checks)"
fi

echo "cli_tokenize: $pass passed, $fail failed"
[ $fail -eq 0 ]
