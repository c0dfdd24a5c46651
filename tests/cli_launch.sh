#!/usr/bin/env bash
# tools/sdlaunch: each rank sees its RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE and
# NCCL_NVLS_ENABLE=0; a failing rank's status becomes sdlaunch's and its siblings are stopped
# (TERM, and KILL for one that ignores TERM); TERM to sdlaunch reaches the ranks; a bad -n is
# refused with exit 2.  The argument (the ssdistill binary) is not needed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
launch=$here/../tools/sdlaunch
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
now_ms() { echo $(($(date +%s%N) / 1000000)); }
t_start=$(now_ms)

ok() { pass=$((pass + 1)); }
bad() {
    fail=$((fail + 1))
    echo "FAIL: $*" >&2
}
check() { # check DESCRIPTION CONDITION...
    local what=$1
    shift
    if "$@"; then ok; else bad "$what"; fi
}
elapsed() { echo $(($(now_ms) - $1)); } # ms since $1
alive() { kill -0 "$1" 2>/dev/null; }

check "sdlaunch is executable" test -x "$launch"

# --- each rank's environment ---------------------------------------------------------------
env_cmd='echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $NCCL_NVLS_ENABLE" > "$0/env.$RANK"'
(unset NCCL_NVLS_ENABLE; "$launch" -n 3 sh -c "$env_cmd" "$tmp") 2>"$tmp/err"
check "3 ranks: exit $?" [ $? -eq 0 ]
for r in 0 1 2; do
    got=$(cat "$tmp/env.$r" 2>/dev/null)
    check "rank $r saw '$got', expected '$r 3 $r 3 0'" [ "$got" = "$r 3 $r 3 0" ]
done
check "a 4th rank ran" [ ! -e "$tmp/env.3" ]
check "stderr not empty: $(cat "$tmp/err")" [ ! -s "$tmp/err" ]

# A set NCCL_NVLS_ENABLE is kept; `--` ends the options; -nN works too.
rm -f "$tmp"/env.*
NCCL_NVLS_ENABLE=1 "$launch" -n1 -- sh -c "$env_cmd" "$tmp"
check "-n1 --: exit $?" [ $? -eq 0 ]
got=$(cat "$tmp/env.0" 2>/dev/null)
check "one rank saw '$got', expected '0 1 0 1 1'" [ "$got" = "0 1 0 1 1" ]

# --- a failing rank stops its siblings -----------------------------------------------------
# Rank 1 exits 3 once the others have written their pids; rank 2 ignores TERM.
fail_cmd='
if [ "$RANK" = 1 ]; then
    for _ in $(seq 100); do [ -s "$0/pid.0" ] && [ -s "$0/pid.2" ] && break; sleep 0.05; done
    exit 3
fi
[ "$RANK" = 2 ] && trap "" TERM
echo $$ > "$0/pid.$RANK.tmp" && mv "$0/pid.$RANK.tmp" "$0/pid.$RANK"
exec sleep 20'
t0=$(now_ms)
SDLAUNCH_KILL_AFTER=1 "$launch" -n 3 sh -c "$fail_cmd" "$tmp" 2>"$tmp/err"
rc=$?
ms=$(elapsed "$t0")
check "failing rank: exit $rc, expected 3" [ "$rc" -eq 3 ]
check "failing rank: took $ms ms" [ "$ms" -lt 5000 ]
check "failing rank: stderr: $(cat "$tmp/err")" \
    grep -qF "sdlaunch: rank 1 exited with status 3; stopping the others" "$tmp/err"
for r in 0 2; do
    pid=$(cat "$tmp/pid.$r" 2>/dev/null)
    check "rank $r never started" [ -n "$pid" ]
    [ -n "$pid" ] && check "rank $r (pid $pid) still running" bash -c "! kill -0 $pid 2>/dev/null"
done

# --- TERM to sdlaunch reaches the ranks -----------------------------------------------------
rm -f "$tmp"/pid.*
sleep_cmd='echo $$ > "$0/pid.$RANK.tmp" && mv "$0/pid.$RANK.tmp" "$0/pid.$RANK"; exec sleep 20'
"$launch" -n 2 sh -c "$sleep_cmd" "$tmp" 2>/dev/null &
lpid=$!
for _ in $(seq 100); do [ -s "$tmp/pid.0" ] && [ -s "$tmp/pid.1" ] && break; sleep 0.05; done
t0=$(now_ms)
kill -TERM "$lpid"
wait "$lpid"
rc=$?
ms=$(elapsed "$t0")
check "TERM: exit $rc, expected 143" [ "$rc" -eq 143 ]
check "TERM: took $ms ms" [ "$ms" -lt 3000 ]
for r in 0 1; do
    pid=$(cat "$tmp/pid.$r" 2>/dev/null)
    check "TERM: rank $r never started" [ -n "$pid" ]
    [ -n "$pid" ] && check "TERM: rank $r (pid $pid) still running" bash -c "! kill -0 $pid 2>/dev/null"
done

# --- bad usage --------------------------------------------------------------------------------
refused() { # refused ARGS...: exit 2 with the usage line, and COMMAND never ran
    rm -f "$tmp/ran"
    "$launch" "$@" 2>"$tmp/err"
    local rc=$?
    check "sdlaunch $*: exit $rc, expected 2" [ "$rc" -eq 2 ]
    check "sdlaunch $*: no usage line: $(cat "$tmp/err")" grep -q "^usage: sdlaunch -n N" "$tmp/err"
    check "sdlaunch $*: the command ran" [ ! -e "$tmp/ran" ]
}
refused -n 0 touch "$tmp/ran"
refused -n x touch "$tmp/ran"
refused -n -1 touch "$tmp/ran"
refused -n 2x touch "$tmp/ran"
refused -n '' touch "$tmp/ran"
refused touch "$tmp/ran"
refused -n 2
refused -n
refused --bogus -n 2 touch "$tmp/ran"

# A command that is not there: its ranks' status (127) comes back.
"$launch" -n 2 "$tmp/no-such-command" 2>/dev/null
rc=$?
check "missing command: exit $rc, expected 127" [ "$rc" -eq 127 ]

# --- the same under bash as under dash (sh) ----------------------------------------------------
got=$(bash "$launch" -n 2 sh -c 'echo "$RANK"' | sort | tr '\n' ' ')
check "under bash: ranks '$got'" [ "$got" = "0 1 " ]
bash "$launch" -n 2 sh -c '[ "$RANK" = 1 ] && exit 5; exec sleep 20' 2>/dev/null
rc=$?
check "under bash: exit $rc, expected 5" [ "$rc" -eq 5 ]

total=$(elapsed "$t_start")
check "the test took $total ms" [ "$total" -lt 15000 ]
echo "cli_launch: $pass passed, $fail failed ($total ms)"
[ "$fail" -eq 0 ]
