#!/usr/bin/env bash
# ssdistill report: a synthetic run directory (three stages, per-layer losses, evaluations,
# eval.json, recipe.json) becomes one self-contained report.html: inline SVG with data, no
# scripts, no network references, well-formed, and rendered by headless chromium without a
# console error.  Broken or missing metrics exit 2 naming the file (and line).
# Needs python3 and chromium (apt-get install -y chromium): without chromium the test fails.
set -u
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
check() { if eval "$2"; then ok; else bad "$1"; fi; }

# expect_fail CODE PATTERN -- cmd...: the exit status is exactly CODE and stderr contains PATTERN.
expect_fail() {
    local code=$1 pattern=$2
    shift 3
    "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ "$rc" -ne "$code" ]; then
        bad "exit $rc (expected $code): $*"
        sed 's/^/    /' "$tmp/err" >&2
    elif ! grep -qF -- "$pattern" "$tmp/err"; then
        bad "stderr lacks '$pattern': $*"
        sed 's/^/    /' "$tmp/err" >&2
    else
        ok
    fi
}

# A run directory: stage 1 spans three decades of loss (log-scale chart), stages 1 and 2 log
# five per-layer losses, stage 3 has evaluations.
run=$tmp/run
mkdir -p "$run"
python3 - "$run" <<'PY'
import json, math, sys
d = sys.argv[1]
with open(d + "/metrics.jsonl", "w") as f:
    for stage, n, base in [(1, 30, 50.0), (2, 40, 3.0), (3, 60, 5.0)]:
        for i in range(1, n + 1):
            step = 10 * i
            loss = base * math.exp(-i / (3.0 if stage == 1 else 15.0)) + 0.01
            rec = {"stage": stage, "step": step, "tokens": step * 2048, "loss": loss, "lr": 1e-3,
                   "grad_norm": 0.8, "tokens_per_s": 12000.0}
            if stage < 3:
                rec["layer_losses"] = [loss / 5 * (1 + 0.1 * l) for l in range(5)]
            f.write(json.dumps(rec) + "\n")
            if stage == 3 and i % 20 == 0:
                ev = {"ppl": 3.1 + 1.0 / i, "kl": 0.2, "top1": 0.7}
                f.write(json.dumps({"event": "eval", "stage": 3, "step": step, "eval": ev}) + "\n")
    f.write(json.dumps({"event": "checkpoint", "stage": 3, "step": 600}) + "\n\n")
json.dump({"student": {"ppl": 3.25, "kl": 0.125, "top1": 0.8125}, "teacher": {"ppl": 2.875},
           "decode": {"tokens_per_s": {"student": 900, "teacher": 450}}}, open(d + "/eval.json", "w"))
json.dump({"name": "tiny <run> & co", "teacher": "/data/hf/stories260K",
           "student": {"mixer": "discrete", "state_size": 16},
           "stages": [{"stage": 1, "tokens": 1000, "schedule": {"type": "constant", "lr": 0.001}},
                      {"stage": 2, "tokens": 2000, "target": "attn_out"},
                      {"stage": 3, "tokens": 30000, "ce_weight": 0.0}]}, open(d + "/recipe.json", "w"))
PY

"$bin" report "$run" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "report exits 0 (got $rc: $(cat "$tmp/err"))" '[ "$rc" -eq 0 ]'
html=$run/report.html
check "report.html written" '[ -s "$html" ]'
check "no temporary file left" '[ ! -e "$html.tmp" ]'
check "prints the path written" 'grep -qF "$html" "$tmp/out"'

svgs=$(grep -o '<svg' "$html" | wc -l)
check "5 charts (3 loss curves, 2 per-layer), got $svgs" '[ "$svgs" -eq 5 ]'
lines=$(grep -Eo '<polyline[^>]* points="[0-9.]+,[0-9.]+( [0-9.]+,[0-9.]+)+"' "$html" | wc -l)
check "3 loss polylines with data points, got $lines" '[ "$lines" -eq 3 ]'
bars=$(grep -o '<rect class="bar"' "$html" | wc -l)
check "10 layer bars, got $bars" '[ "$bars" -eq 10 ]'
check "stage 1 loss on a log scale" 'grep -qF "loss (log scale)" "$html"'
check "tick labels on the axes" 'grep -qF ">0.01</text>" "$html" && grep -qF ">100</text>" "$html"'
check "no script" '! grep -qi "<script" "$html"'
check "no network reference but the SVG namespace" \
    '! sed "s#xmlns=\"http://www.w3.org/2000/svg\"##g" "$html" | grep -Eqi "https?://"'
check "no external stylesheet or font" '! grep -Eqi "<link|@import|url\(" "$html"'
check "eval.json table" 'grep -qF "<th>student</th><td>3.25</td><td>0.125</td><td>0.8125</td>" "$html"'
check "nested eval.json fields" 'grep -qF "decode.tokens_per_s" "$html"'
check "evaluations during training" 'grep -qF "stage 3, step 400" "$html"'
check "recipe summary" 'grep -qF "discrete" "$html" && grep -qF "ce_weight" "$html"'
check "text from the run is escaped" 'grep -qF "tiny &lt;run&gt; &amp; co" "$html" && ! grep -qF "<run>" "$html"'
python3 -c 'import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])' "$html" 2>"$tmp/xml"
check "report.html is well-formed XML: $(cat "$tmp/xml")" '[ ! -s "$tmp/xml" ]'

# The page as a browser sees it.
if command -v chromium >/dev/null 2>&1; then
    timeout 120 chromium --headless --no-sandbox --disable-gpu --user-data-dir="$tmp/chrome" \
        --enable-logging=stderr --v=0 --dump-dom "file://$html" >"$tmp/dom" 2>"$tmp/chrome.err"
    crc=$?
    check "chromium exits 0 (got $crc)" '[ "$crc" -eq 0 ]'
    dsvg=$(grep -o '<svg' "$tmp/dom" | wc -l)
    dpoly=$(grep -Eo '<polyline[^>]* points="[0-9.]+,[0-9.]+ ' "$tmp/dom" | wc -l)
    check "chromium's DOM keeps the 5 charts (got $dsvg) and 3 curves (got $dpoly)" '[ "$dsvg" -eq 5 ] && [ "$dpoly" -eq 3 ]'
    check "chromium's DOM has the bars" '[ "$(grep -o "<rect class=\"bar\"" "$tmp/dom" | wc -l)" -eq 10 ]'
    # Console messages and failed loads of the page (chromium's own dbus/GPU noise is not the page's).
    if grep -E "CONSOLE|Uncaught|Failed to load|net::ERR_" "$tmp/chrome.err" >"$tmp/console"; then
        bad "chromium reported errors for the page:"
        sed 's/^/    /' "$tmp/console" >&2
    else
        ok
    fi
else
    bad "chromium is not installed: the report's rendering check needs it (apt-get install -y chromium)"
fi

# Broken input: exit 2, naming the file and the line.
mkdir -p "$tmp/bad"
head -n 2 "$run/metrics.jsonl" >"$tmp/bad/metrics.jsonl"
echo '{"stage": 1, "step": 30, "loss": 0.5' >>"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl:3: not valid JSON" -- "$bin" report "$tmp/bad"
check "no report from broken metrics" '[ ! -e "$tmp/bad/report.html" ] && [ ! -e "$tmp/bad/report.html.tmp" ]'
printf '{"stage": 1, "step": 10, "loss": 1}\n{"stage": 1, "step": 20, "loss": "low"}\n' >"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl:2: field 'loss': expected a number" -- "$bin" report "$tmp/bad"
printf '{"stage": 4, "step": 10, "loss": 1}\n' >"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl:1: field 'stage': expected 1, 2 or 3" -- "$bin" report "$tmp/bad"
printf '{"stage": 1, "step": 10, "loss": 1, "layer_losses": [1, "x"]}\n' >"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl:1: field 'layer_losses[1]'" -- "$bin" report "$tmp/bad"
printf '{"stage": 1, "step": 10, "event": "eval"}\n' >"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl:1: field 'eval'" -- "$bin" report "$tmp/bad"
printf '\n\n' >"$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl: empty" -- "$bin" report "$tmp/bad"
rm "$tmp/bad/metrics.jsonl"
expect_fail 2 "$tmp/bad/metrics.jsonl: no metrics file" -- "$bin" report "$tmp/bad"
printf '{"stage": 1, "step": 10, "loss": 1}\n' >"$tmp/bad/metrics.jsonl"
echo '{"student": ' >"$tmp/bad/eval.json"
expect_fail 2 "$tmp/bad/eval.json: not valid JSON" -- "$bin" report "$tmp/bad"
expect_fail 2 "$tmp/nothere: not a run directory" -- "$bin" report "$tmp/nothere"
expect_fail 2 "usage: ssdistill report" -- "$bin" report
expect_fail 2 "unknown option --bogus" -- "$bin" report "$run" --bogus

echo "cli_report: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
