#!/bin/bash
# malformed-images.sh - hold libqed to its promises on hostile images.
#
# make-corpus.py writes a corpus of hand-made broken QED images and a
# manifest of what each must do.  For every image, on fresh copies:
#   refuse images: a read-only and a read-write open both fail, with a message
#     naming the file and the problem, and neither changes the file;
#   serve images:
#     ro      read-only open, read every cluster (reads of corrupt clusters
#             fail with EIO, every other read returns exactly the bytes the
#             tables point at), check counts the corruptions; the file is
#             unchanged (bytes and mtime);
#     rw      an image marked clean with invalid entries (rw_open=refuse):
#             the read-write open is refused, the message names the file,
#             the count of bad entries and `qed-img check -r FILE`, and the
#             file is unchanged; then (with the repair option for those)
#             read-write open (repairing when NEED_CHECK is set or when the
#             option asks), the same reads, writes to corrupt clusters
#             fail with EIO, allocating writes read back, nothing else
#             moves; the file changes only in the header, the repaired
#             entries, the new L1 entry and past the old end of the file;
#     repair  qed_check with repair leaves only what QEMU cannot fix either,
#             changes only the header and the invalid entries, and the
#             repaired image reads as the manifest says;
#     qemu    where QEMU opens the image: `qemu-img check` counts the same
#             corruptions and leaks before repair, `qemu-img check -r all`
#             leaves the same result, qed-img check exits as qemu-img does,
#             and both repairs write the same bytes (but for the entries
#             of a table that overlaps another, which QEMU skips: qemu_left).
# Each step runs the probe in its own process under a timeout: a crash, a
# hang or a sanitizer report fails the image and the test moves on.
# One line per image, "PASS NAME (what it is) [notes]" or "FAIL NAME (what it
# is)" followed by the reasons and the start of the image's log.
#
# Environment: top_builddir, top_srcdir (set by make check); KEEP=1 keeps
# the scratch directory; ONLY=NAME runs one image; JOBS=N images at once
# (default 4); STEP_TIMEOUT=S bounds each step (default 120 s).
set -u

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"
PROBE="$top_builddir/tests/images/qed-image-probe"
QED_IMG="$top_builddir/contrib/qed-img/qed-img"
GEN="$top_srcdir/tests/images/make-corpus.py"
[ -x "$PROBE" ] || fail "$PROBE is not built"
[ -x "$QED_IMG" ] || fail "$QED_IMG is not built"
command -v python3 >/dev/null || skip "python3 is not installed"
STEP_TIMEOUT=${STEP_TIMEOUT:-120}

have_qemu=0
if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
    have_qemu=1
else
    echo "note: qemu-img/qemu-io not installed; the QEMU comparisons are skipped"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qed-images.XXXXXX") || fail "mktemp failed"
if [ "${KEEP:-0}" = 1 ]; then
    echo "keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
corpus="$tmp/corpus"
python3 "$GEN" "$corpus" || fail "make-corpus.py failed"
total=$(wc -l <"$corpus/manifest")
[ "$total" -ge 30 ] || fail "the corpus has $total images, fewer than 30"

# ---- helpers ----

declare -A F        # the current manifest line, field by field
reasons=()          # why the current image fails
notes=()            # informational differences

bad() { reasons+=("$*"); }

# parse_line LINE - fill F from "key=value<TAB>key=value..."
parse_line() {
    local item
    F=()
    local IFS=$'\t'
    for item in $1; do
        F[${item%%=*}]=${item#*=}
    done
}

# stamp FILE - bytes and modification time, to prove a file untouched.
stamp() { echo "$(sha256sum <"$1" | cut -d' ' -f1) $(stat -c '%s %Y.%y' "$1")"; }

# fresh DIR - a new directory holding a copy of the image and its side files.
fresh() {
    local d="$tmp/work/${F[name]}/$1"
    rm -rf "$d" && mkdir -p "$d" || fail "mkdir $d"
    cp "$corpus/${F[name]}.qed" "$d/" || fail "copy ${F[name]}"
    local f
    for f in ${F[files]//,/ }; do
        cp "$corpus/$f" "$d/" || fail "copy $f"
    done
    echo "$d"
}

# backing_flags DIR - bf=(-b DIR/BACKING) when the image has a backing file.
backing_flags() {
    bf=()
    [ -n "${F[backing]:-}" ] && bf=(-b "$1/${F[backing]}")
}

# probe STEP ARGS... - run the probe; its exit status is in $prc, its output
# in $wd/out.  Crashes, hangs and sanitizer reports become reasons.
probe() {
    local step=$1
    shift
    prc=0
    timeout -k 5 "$STEP_TIMEOUT" "$PROBE" "$@" >"$wd/out" 2>"$wd/err" || prc=$?
    {
        echo "== $step: qed-image-probe $*  (exit $prc)"
        cat "$wd/out" "$wd/err"
    } >>"$log"
    if [ "$prc" -eq 124 ] || [ "$prc" -eq 137 ]; then
        bad "$step: hung (killed after ${STEP_TIMEOUT}s)"
        prc=-1
    elif [ "$prc" -gt 128 ]; then
        bad "$step: crashed with signal $((prc - 128))"
        prc=-1
    elif grep -qE 'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:' "$wd/err"; then
        bad "$step: sanitizer report: $(grep -m1 -E 'ERROR|runtime error' "$wd/err")"
        prc=-1
    fi
}

# mismatches STEP - after a probe exit other than 0 and 3: turn its
# MISMATCH lines into a reason, or say how it failed.
mismatches() {
    local n
    n=$(grep -c '^MISMATCH' "$wd/out")
    if [ "$n" -gt 0 ]; then
        bad "$1: $(grep -m1 '^MISMATCH' "$wd/out" | cut -c11-) ($n mismatch lines)"
    else
        bad "$1: the probe exited $prc: $(tail -n 1 "$wd/err")"
    fi
}

# count KEY - a key=value from the probe's check output line.
count() { sed -nE "s/.*[ ]$1=([0-9]+).*/\\1/p" "$wd/out" | head -n 1; }

# diff_bytes A B - "OFFSET OLD NEW" (decimal, 0-based) for each byte that
# differs, then "size SA SB" when the sizes differ.  (cmp -l counts from 1
# and prints values in octal.)
diff_bytes() {
    cmp -l "$1" "$2" 2>/dev/null | awk '
        function oct(s,   n, i) { n = 0; for (i = 1; i <= length(s); i++) n = n * 8 + substr(s, i, 1); return n }
        { print $1 - 1, oct($2), oct($3) }'
    local sa sb
    sa=$(stat -c %s "$1") sb=$(stat -c %s "$2")
    [ "$sa" = "$sb" ] || echo "size $sa $sb"
}

# changed_outside BEFORE AFTER RANGES - print the first byte offset (hex)
# where AFTER differs from BEFORE outside the header and the RANGES (OFF+LEN
# hex, comma-separated; "OFF+" means to the end, growth included), or how
# the size changed when that is not allowed.
changed_outside() {
    diff_bytes "$1" "$2" | awk -v ranges="$3" '
        function hex(s,   n, i, c) {
            n = 0
            for (i = 1; i <= length(s); i++) {
                c = index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
                n = n * 16 + c
            }
            return n
        }
        BEGIN {
            na = 1; lo[1] = 0; hi[1] = 64
            k = split(ranges, r, ",")
            for (i = 1; i <= k; i++) {
                if (r[i] == "") continue
                split(r[i], p, "+")
                na++; lo[na] = hex(p[1]); hi[na] = p[2] == "" ? -1 : lo[na] + hex(p[2])
            }
        }
        $1 == "size" {
            if ($3 < $2) { print "truncated to " $3 " bytes"; exit }
            for (i = 1; i <= na; i++)
                if ($2 >= lo[i] && (hi[i] < 0 || $3 <= hi[i])) next
            print "grew to " $3 " bytes"; exit
        }
        {
            for (i = 1; i <= na; i++)
                if ($1 >= lo[i] && (hi[i] < 0 || $1 < hi[i])) next
            printf "0x%x\n", $1; exit
        }'
}

# hdr_u64 FILE OFFSET - a little-endian u64 of the header, in decimal.
hdr_u64() { od -An -tu8 -j"$2" -N8 --endian=little "$1" | tr -d ' '; }

# need_check FILE - 1 when the header has NEED_CHECK set.
need_check() { echo $(( $(hdr_u64 "$1" 16) >> 1 & 1 )); }

# json_count FILE KEY - a number from qemu-img check --output=json (0 when absent).
json_count() {
    local v
    v=$(sed -nE "s/.*\"$2\": *([0-9]+).*/\\1/p" "$1" | head -n 1)
    echo "${v:-0}"
}

# ---- the steps ----

refuse_step() {
    local mode=$1 d img before
    d=$(fresh "$mode")
    img="$d/${F[name]}.qed"
    before=$(stamp "$img")
    if [ "$mode" = ro ]; then probe "$mode open" open "$img"; else probe "$mode open" -w open "$img"; fi
    [ "$prc" -lt 0 ] && return
    if [ "$prc" -ne 3 ]; then
        bad "$mode open: expected a refusal, got exit $prc ($(head -n 1 "$wd/out"))"
        return
    fi
    msg=$(sed -n 's/^refused: //p' "$wd/out")
    if [ "$mode" = ro ]; then
        msg_note=${msg#"$wd/ro/"}
    elif [ "${msg#"$wd/rw/"}" != "$msg_note" ]; then
        msg_note="$msg_note (read-write: ${msg#"$wd/rw/"})"
    fi
    grep -qF -- "$img" <<<"$msg" || bad "$mode open: message does not name the file: $msg"
    local alt found=0
    local IFS='|'
    for alt in ${F[msg]}; do
        grep -qF -- "$alt" <<<"$msg" && found=1
    done
    unset IFS
    [ "$found" = 1 ] || bad "$mode open: message lacks '${F[msg]}': $msg"
    [ "$(stamp "$img")" = "$before" ] || bad "$mode open: a refused open changed the file"
}

qemu_opens() {  # qemu_opens IMG - does QEMU open it (backing chain included)?
    timeout -k 5 30 qemu-io -r -f qed -c 'read 0 512' "$1" >>"$log" 2>&1
}

do_refuse() {
    refuse_step ro
    refuse_step rw
    if [ "$have_qemu" = 1 ] && [ "${F[qemu]}" != skip ]; then
        local d q=refuse
        d=$(fresh qemu)
        qemu_opens "$d/${F[name]}.qed" && q=open
        if [ "$q" != "${F[qemu]}" ]; then
            notes+=("QEMU does $q it, the manifest says ${F[qemu]}")
        elif [ "$q" = open ]; then
            notes+=("QEMU opens it")
        fi
    fi
}

# rw_refused IMG - a clean image with invalid entries: the read-write open
# fails, names the file, the count and the repair command, and writes nothing.
rw_refused() {
    local img=$1 before msg n=$((F[corrupt] - F[remaining]))
    before=$(stamp "$img")
    probe "rw open without repair" -w open "$img"
    [ "$prc" -lt 0 ] && return
    if [ "$prc" -ne 3 ]; then
        bad "rw open without repair: expected a refusal, got exit $prc ($(head -n 1 "$wd/out"))"
        return
    fi
    msg=$(sed -n 's/^refused: //p' "$wd/out")
    grep -qF -- "$img" <<<"$msg" || bad "rw refusal does not name the file: $msg"
    grep -qF -- "$n invalid table entr" <<<"$msg" || bad "rw refusal does not count $n entries: $msg"
    grep -qF -- "qed-img check -r $img" <<<"$msg" || bad "rw refusal does not name the repair: $msg"
    [ "$(stamp "$img")" = "$before" ] || bad "a refused read-write open changed the file"
    notes+=("rw refused without repair")
}

do_serve() {
    local d img before after_spec lib_leaks lib_c0 rng lib_repaired

    # -- read-only: reads, check, and not a byte or a timestamp changed --
    d=$(fresh ro)
    img="$d/${F[name]}.qed"
    before=$(stamp "$img")
    backing_flags "$d"
    probe "ro reads" -s "${F[reads]}" -c "${F[clusters]}" "${bf[@]}" reads "$img"
    if [ "$prc" -eq 3 ]; then
        bad "ro open refused: $(sed -n 's/^refused: //p' "$wd/out")"
        return
    fi
    [ "$prc" -gt 0 ] && mismatches "ro reads"
    [ "$prc" -lt 0 ] && return
    probe "ro check" check "$img"
    [ "$prc" -gt 0 ] && mismatches "ro check"
    if [ "$prc" -eq 0 ]; then
        lib_c0=$(count corruptions)
        lib_leaks=$(count leaks)
        [ "$lib_c0" = "${F[corrupt]}" ] || bad "ro check: $lib_c0 corruptions, expected ${F[corrupt]}"
        [ "$(count check_errors)" = 0 ] || bad "ro check: check errors"
    fi
    [ "$(stamp "$img")" = "$before" ] || bad "a read-only open changed the file"

    # -- read-write: repair at open when NEED_CHECK, reads, writes --
    d=$(fresh rw)
    img="$d/${F[name]}.qed"
    backing_flags "$d"
    cp "$img" "$wd/orig"
    after_spec=${F[reads]}
    rng=""
    # A read-write open repairs when NEED_CHECK is set (a crash).  An image
    # marked clean with invalid entries that a repair fixes is refused,
    # untouched, unless the repair option asks: entries past the end of the
    # file must not survive a session that grows the file, or the next open
    # would see them point at new clusters.
    local repairs=0 ropt=()
    if [ "${F[rw_open]}" = refuse ]; then
        rw_refused "$img"
        ropt=(-R)
    fi
    if [ "${F[need_check]}" = 1 ] || [ "${F[corrupt]}" != "${F[remaining]}" ]; then
        repairs=1
        after_spec=${F[repaired]}
        rng=${F[repair_may_change]}
    fi
    if [ -n "${F[scratch]}" ]; then
        probe "rw writes" -w "${ropt[@]}" -s "$after_spec" -c "${F[clusters]}" \
            -x "${F[scratch]}" -a "${F[reopen]}" "${bf[@]}" write "$img"
        rng="$rng,${F[scratch_l1]}+8,${F[file_end]}+"
    else
        probe "rw reads" -w "${ropt[@]}" -s "$after_spec" -c "${F[clusters]}" \
            "${bf[@]}" reads "$img"
    fi
    if [ "$prc" -eq 3 ]; then
        bad "rw open refused: $(sed -n 's/^refused: //p' "$wd/out")"
    elif [ "$prc" -gt 0 ]; then
        mismatches "rw"
    fi
    where=$(changed_outside "$wd/orig" "$img" "$rng")
    [ -n "$where" ] && bad "rw: the file changed where it should not (at $where)"
    # The header after a read-write open and close: unknown autoclear bits
    # cleared, compat bits kept, NEED_CHECK only while corruption remains
    # that this open did not cause.
    [ "$(hdr_u64 "$img" 32)" = 0 ] || bad "rw: autoclear bits not cleared ($(hdr_u64 "$img" 32))"
    [ "$(hdr_u64 "$img" 24)" = "$(hdr_u64 "$wd/orig" 24)" ] || bad "rw: compat bits changed"
    local want_nc=0
    [ "${F[need_check]}" = 1 ] && [ "${F[remaining]}" != 0 ] && want_nc=1
    [ "$(need_check "$img")" = "$want_nc" ] || bad "rw: NEED_CHECK is $(need_check "$img") after close, expected $want_nc"
    if [ "$prc" -ge 0 ] && [ "$prc" -ne 3 ]; then
        probe "rw check" check "$img"
        [ "$prc" -gt 0 ] && mismatches "rw check"
        local want=${F[corrupt]}
        [ "$repairs" = 1 ] && want=${F[remaining]}
        [ "$(count corruptions)" = "$want" ] ||
            bad "check after rw use: $(count corruptions) corruptions, expected $want"
    fi

    # -- repair --
    d=$(fresh repair)
    img="$d/${F[name]}.qed"
    backing_flags "$d"
    cp "$img" "$wd/orig"
    probe "repair" repair "$img"
    [ "$prc" -gt 0 ] && mismatches "repair"
    where=$(changed_outside "$wd/orig" "$img" "${F[repair_may_change]}")
    [ -n "$where" ] && bad "repair: the file changed where it should not (at $where)"
    probe "check after repair" check "$img"
    [ "$prc" -gt 0 ] && mismatches "check after repair"
    [ "$(count corruptions)" = "${F[remaining]}" ] ||
        bad "check after repair: $(count corruptions) corruptions, expected ${F[remaining]}"
    probe "reads after repair" -s "${F[repaired]}" -c "${F[clusters]}" \
        "${bf[@]}" reads "$img"
    [ "$prc" -gt 0 ] && mismatches "reads after repair"
    lib_repaired=$img
    # NEED_CHECK says "consistent" only when nothing is left to repair.
    local nc
    nc=$(need_check "$img")
    if [ "${F[need_check]}" = 1 ] && [ "${F[remaining]}" != 0 ]; then
        [ "$nc" = 1 ] || bad "repair cleared NEED_CHECK although ${F[remaining]} corruptions remain"
    else
        [ "$nc" = 0 ] || bad "NEED_CHECK still set after a repair that left nothing to fix"
    fi

    # -- QEMU, where it can open the image --
    [ "$have_qemu" = 1 ] || return
    if [ "${F[qemu]}" != open ]; then
        notes+=("QEMU: ${F[qemu]}, not compared")
        return
    fi
    d=$(fresh qemu)
    img="$d/${F[name]}.qed"
    local qrc=0 lrc=0 qc ql
    timeout -k 5 "$STEP_TIMEOUT" qemu-img check -f qed --output=json "$img" >"$wd/q.json" 2>>"$log" || qrc=$?
    cat "$wd/q.json" >>"$log"
    if ! grep -q '"check-errors"' "$wd/q.json"; then
        bad "qemu-img check failed to run (exit $qrc)"
        return
    fi
    qc=$(json_count "$wd/q.json" corruptions)
    ql=$(json_count "$wd/q.json" leaks)
    [ "$qc" = "${F[qemu_corrupt]}" ] || bad "qemu-img check: $qc corruptions, manifest says ${F[qemu_corrupt]}"
    if [ -z "${lib_leaks:-}" ] || [ "$ql" != "$((lib_leaks + ${F[qemu_extra_leaks]:-0}))" ]; then
        bad "leaks: qemu-img $ql, qed_check ${lib_leaks:-?} (+${F[qemu_extra_leaks]:-0} expected for QEMU)"
    fi
    "$QED_IMG" check "$img" >>"$log" 2>&1 || lrc=$?
    [ "$lrc" = "$qrc" ] || bad "before repair: qed-img check exits $lrc, qemu-img check $qrc"

    timeout -k 5 "$STEP_TIMEOUT" qemu-img check -f qed -r all "$img" >>"$log" 2>&1
    qrc=0
    timeout -k 5 "$STEP_TIMEOUT" qemu-img check -f qed --output=json "$img" >"$wd/q.json" 2>>"$log" || qrc=$?
    qc=$(json_count "$wd/q.json" corruptions)
    local qwant=0
    # QEMU fixes what we fix, but for the entries it never saw (qemu_left).
    [ "${F[remaining]}" != 0 ] &&
        qwant=$((F[qemu_corrupt] - (F[corrupt] - F[remaining] - ${F[qemu_left]:-0})))
    [ "$qc" = "$qwant" ] || bad "after qemu-img check -r all: $qc corruptions, expected $qwant"
    lrc=0
    "$QED_IMG" check "$lib_repaired" >>"$log" 2>&1 || lrc=$?
    [ "$lrc" = "$qrc" ] || bad "after repair: qed-img check exits $lrc, qemu-img check $qrc"
    # Both repairs must write the same bytes.  One known difference: QEMU
    # clears NEED_CHECK on close even when corruption remains; we keep it.
    # Where QEMU skipped entries (qemu_left), we may also differ in the
    # entries we repair; QEMU leaves those as they were.
    if [ "${F[qemu_left]:-0}" != 0 ]; then
        where=$(changed_outside "$img" "$lib_repaired" "${F[repair_may_change]}")
        notes+=("QEMU leaves ${F[qemu_left]} invalid entries we repair")
    else
        where=$(diff_bytes "$img" "$lib_repaired" | awk '
            $1 == "size" { print "size " $2 " vs " $3; exit }
            $1 == 16 && ($2 - $3 == 2 || $3 - $2 == 2) { next }   # NEED_CHECK only
            { printf "0x%x\n", $1; exit }')
    fi
    [ -z "$where" ] || bad "qed_check and qemu-img check -r all repaired differently (first difference at $where)"
}

# ---- main ----

# run_image LINE - test one image (in a background job: no state leaks out);
# print its result block, and exit 0 when it passed.
run_image() {
    parse_line "$1"
    wd="$tmp/work/${F[name]}"
    mkdir -p "$wd" || fail "mkdir $wd"
    log="$tmp/logs/${F[name]}.log"
    : >"$log"
    reasons=() notes=() msg_note=""
    if [ "${F[expect]}" = refuse ]; then do_refuse; else do_serve; fi
    if [ "${#reasons[@]}" -eq 0 ]; then
        extra=""
        [ "${F[expect]}" = refuse ] && extra=" -> $msg_note"
        [ "${#notes[@]}" -gt 0 ] && extra="$extra [$(IFS=';'; echo "${notes[*]}")]"
        echo "PASS ${F[name]} (${F[expect]}: ${F[desc]})$extra"
        return 0
    fi
    echo "FAIL ${F[name]} (${F[expect]}: ${F[desc]})"
    for r in "${reasons[@]}"; do echo "     - $r"; done
    echo "     log:"
    # The library logs every corrupt entry it meets: show a few of those.
    awk '/^libqed:/ { if (++n > 5) next } { print }' "$log" | sed 's/^/       | /' | head -n 60
    return 1
}

export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
# Images run in parallel: the steps are mostly process start-up and waiting.
JOBS=${JOBS:-4}
mkdir -p "$tmp/logs" "$tmp/results"
idx=0
while IFS= read -r line; do
    parse_line "$line"
    [ -n "${ONLY:-}" ] && [ "${F[name]}" != "$ONLY" ] && continue
    idx=$((idx + 1))
    run_image "$line" >"$tmp/results/$(printf %03d "$idx")" 2>&1 &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        wait -n
    done
done <"$corpus/manifest"
wait

passed=0 failed=0
for r in "$tmp"/results/*; do
    [ -e "$r" ] || continue
    cat "$r"
    if grep -q '^PASS ' "$r"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
done
echo "malformed images: $passed passed, $failed failed (of $total)"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
