#!/bin/sh
# The MOHAWK ablation (issue 4): five variants of one recipe at one token budget, each a full
# `ssdistill distill` run, then the table of eval perplexity ratio, KL and top-1 on the
# recipe's eval text.  A benchmark, never a test.
#
#   sh bench/ablation/run.sh [BASE_RECIPE] [SCALE] [OUT_DIR]
#
# BASE_RECIPE (default recipes/stories260k.json) gives the teacher, data, student and the three
# stages; SCALE (default 1) multiplies every stage's token budget.  Every variant spends the same
# total budget: stages it drops give their tokens to stage 3.
#   stage3       stage 3 only (weight transfer, fresh mixers)
#   stage23      stages 2 + 3
#   stage123     stages 1 + 2 + 3
#   stage123_att stages 1 + 2 + 3, mixers initialised from attention (state_size = head dim)
#   scratch_ce   no weight transfer, stage 3 with cross-entropy only (ce_weight 1)
# Prints one JSON line per variant and a table last; runs in OUT_DIR (default runs/ablation).
# PARALLEL=1 runs the five at once (on a machine with cores to spare), THREADS=N sets each
# variant's CPU threads.
set -eu
base=${1:-recipes/stories260k.json}
scale=${2:-1}
out=${3:-runs/ablation}
bin=${SSDISTILL_BIN:-build/ssdistill}
mkdir -p "$out"
python3 - "$base" "$scale" "$out" <<'PY'
import json, os, sys
base, scale, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
r = json.load(open(base))
here = os.path.dirname(os.path.abspath(base))
# sample.out is relative to the recipe's folder: keep pointing at the same shard
s = r.get("data", {}).get("sample")
if s and not os.path.isabs(s["out"]):
    s["out"] = os.path.join(here, s["out"])
if not r["teacher"].startswith("${") and not os.path.isabs(r["teacher"]):
    r["teacher"] = os.path.join(here, r["teacher"])
stages = {st["stage"]: st for st in r["stages"]}
for st in stages.values():
    st["tokens"] = int(st["tokens"] * scale)
    sch = st.get("schedule", {})
    if "warmup_steps" in sch: sch["warmup_steps"] = int(sch["warmup_steps"] * min(scale, 1.0))
total = sum(st["tokens"] for st in stages.values())
def variant(name, keep, init="mohawk", state=None, ce=None):
    v = json.loads(json.dumps(r))
    v["name"] = name
    if os.environ.get("THREADS"): v["threads"] = int(os.environ["THREADS"])
    v["student"]["init"] = init
    if state: v["student"]["state_size"] = state
    v["stages"] = [json.loads(json.dumps(stages[k])) for k in keep]
    v["stages"][-1]["tokens"] = total - sum(st["tokens"] for st in v["stages"][:-1])
    if ce is not None:
        v["stages"][-1]["ce_weight"] = ce
    json.dump(v, open(os.path.join(out, name + ".json"), "w"), indent=1)
variant("stage3", [3])
variant("stage23", [2, 3])
variant("stage123", [1, 2, 3])
variant("stage123_att", [1, 2, 3], init="attention", state=8)
variant("scratch_ce", [3], init="random", ce=1.0)
PY
one() {
    v=$1
    start=$(date +%s)
    if [ -s "$out/$v/eval.json" ]; then echo "$v: already done" >&2; return 0; fi
    "$bin" distill "$out/$v.json" --out "$out/$v" 2> "$out/$v.log" || { echo "$v failed: see $out/$v.log" >&2; tail -3 "$out/$v.log" >&2; return 0; }
    echo $(( $(date +%s) - start )) > "$out/$v/wall_s"
}
for v in stage3 stage23 stage123 stage123_att scratch_ce; do
    if [ "${PARALLEL:-0}" = 1 ]; then one $v & else one $v; fi
done
wait
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for v in ["stage3", "stage23", "stage123", "stage123_att", "scratch_ce"]:
    p = os.path.join(out, v, "eval.json")
    if not os.path.exists(p): continue
    e = json.load(open(p))
    w = open(os.path.join(out, v, "wall_s")).read().strip() if os.path.exists(os.path.join(out, v, "wall_s")) else "?"
    row = {"variant": v, "ppl": e["ppl"], "teacher_ppl": e["teacher_ppl"], "ratio": e["ppl"] / e["teacher_ppl"],
           "kl": e["kl"], "top1": e["top1"], "tokens": e["tokens"], "wall_s": w}
    print(json.dumps(row))
    rows.append(row)
print("| variant | ppl | teacher ppl | ratio | KL | top-1 | wall s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %s |" % (r["variant"], r["ppl"], r["teacher_ppl"], r["ratio"], r["kl"], r["top1"], r["wall_s"]))
PY
