#!/bin/bash
# cpu-breakdown-smoke.sh - a short run of contrib/bench/cpu-breakdown.sh, so
# that the measurement behind README.md "Multi-core design (issue 14)"
# cannot rot.
#
# 1. cpu-split.py on a hand-made `perf script` text: each sample lands in the
#    category its call chain names (socket receive and send, the file copy on
#    the loop, epoll, iou-wrk, engine, libev, libc memcpy), another process's
#    samples are left out, and the CPU per I/O follows from --freq and --ios.
# 2. cpu-breakdown.sh on a 64 MiB image (1 s per run, 1 repetition, 1 and 2
#    connections, --no-perf: part 1 covers the classifier, and perf may be
#    missing or not allowed): every qednbd run of runs.tsv counted I/Os with
#    a positive rate, and the report has its table.
# No timing is asserted.  Skips when fio (with its nbd engine) or python3 is
# missing; nbdkit is used when installed.
set -u

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

: "${top_builddir:?top_builddir must be set (run through make check)}"
: "${top_srcdir:?top_srcdir must be set (run through make check)}"

command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
dir=$top_srcdir/contrib/bench
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cpu-breakdown-smoke.XXXXXX") || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

# ---- 1. the classifier -------------------------------------------------------
cat >"$tmp/script.txt" <<'EOF'
qednbd  100/100  
	ffffffff81ba4f70 _copy_to_iter ([kernel.kallsyms])
	ffffffff8211ec2b unix_stream_recvmsg ([kernel.kallsyms])
	ffffffff816daff5 do_readv ([kernel.kallsyms])
	ffffffff8223df91 do_syscall_64 ([kernel.kallsyms])
	           fddc0 __GI___readv (/usr/lib/x86_64-linux-gnu/libc.so.6)

qednbd  100/100  
	ffffffff8211f70e unix_stream_sendmsg ([kernel.kallsyms])
	ffffffff816dbd05 do_writev ([kernel.kallsyms])
	ffffffff8223df91 do_syscall_64 ([kernel.kallsyms])

qednbd  100/100  
	ffffffff815d3fd7 shmem_file_read_iter ([kernel.kallsyms])
	ffffffff816db0c9 do_preadv ([kernel.kallsyms])
	ffffffff8223df91 do_syscall_64 ([kernel.kallsyms])

qednbd  100/100  
	ffffffff816db0c9 do_epoll_wait ([kernel.kallsyms])
	ffffffff8223df91 do_syscall_64 ([kernel.kallsyms])

iou-wrk-100  100/105  
	ffffffff81ba4f70 _copy_to_iter ([kernel.kallsyms])

qednbd  100/100  
	            1234 qed_req_run_lookup (/build/server/qednbd)

qednbd  100/100  
	            1234 ev_run (/usr/lib/x86_64-linux-gnu/libev.so.4.0.0)

qednbd  100/100  
	            1234 __memmove_avx_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)

fio  200/200  
	ffffffff81ba4f70 _copy_to_iter ([kernel.kallsyms])

EOF
# The classifier reads the engine's symbols with nm from libqed-*.a; give it
# one name through a stand-in nm, so this part needs no build.
mkdir -p "$tmp/lib" "$tmp/bin"
: >"$tmp/lib/libqed-engine.a"
cat >"$tmp/bin/nm" <<'EOF'
#!/bin/sh
case "$2" in *engine*) echo "0000000000000000 T qed_req_run_lookup" ;; esac
EOF
chmod +x "$tmp/bin/nm"
PATH=$tmp/bin:$PATH python3 "$dir/cpu-split.py" --pid 100 --freq 1000 --ios 1000 --syms-dir "$tmp/lib" \
    <"$tmp/script.txt" >"$tmp/split.tsv" || fail "cpu-split.py failed"
cat "$tmp/split.tsv"
expect() {
    grep -qxF "$1" "$tmp/split.tsv" || fail "cpu-split.py: no line '$1'"
}
# 8 samples of pid 100 at 1000 Hz over 1000 I/Os: 1 us per sample per I/O.
expect "$(printf 'total\t8\t8.000')"
expect "$(printf 'cat\tsocket recv\t1\t1.000\t1.000')"
expect "$(printf 'cat\tsocket send\t1\t1.000\t0.000')"
expect "$(printf 'cat\tfile pread/pwrite on loop\t1\t1.000\t0.000')"
expect "$(printf 'cat\tepoll_wait\t1\t1.000\t0.000')"
expect "$(printf 'cat\tfile I/O in iou-wrk\t1\t1.000\t1.000')"
expect "$(printf 'cat\tlib/engine\t1\t1.000\t0.000')"
expect "$(printf 'cat\tlibev\t1\t1.000\t0.000')"
expect "$(printf 'cat\tuser memcpy (libc)\t1\t1.000\t0.000')"
expect "$(printf 'thr\tloop thread\t7\t7.000')"
expect "$(printf 'thr\tiou-wrk\t1\t1.000')"

# ---- 2. a short run ------------------------------------------------------------
command -v fio >/dev/null 2>&1 || skip "fio is not installed"
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"
[ -x "$top_builddir/server/qednbd" ] || fail "$top_builddir/server/qednbd is not built"
args=(--builddir "$top_builddir" --dirs "$tmp" --size 64M --runtime 1 --reps 1 --numjobs "1,2"
      --workloads "randread-4k,read-1M,alloc-4k" --outdir "$tmp/out"
      --no-perf)
command -v nbdkit >/dev/null 2>&1 || args+=(--no-nbdkit)
echo "+ cpu-breakdown.sh ${args[*]}"
"$dir/cpu-breakdown.sh" "${args[@]}" >"$tmp/report.md" 2>"$tmp/err" ||
    { cat "$tmp/err"; fail "cpu-breakdown.sh failed"; }
cat "$tmp/report.md"
# runs.tsv: fs server rep mode workload jobs ios iops MiB/s cpu loop% server%
n=$(awk -F'\t' '$4 == "cpu" && $2 == "qednbd" && $7 > 0 && $8 > 0' "$tmp/out/runs.tsv" | wc -l)
[ "$n" -eq 5 ] || fail "expected 5 qednbd runs with I/Os (2 workloads x 2 + alloc), got $n"
grep -q 'throughput and server CPU per I/O' "$tmp/report.md" || fail "no throughput table"
grep -qE '^\| alloc-4k \| 1 \| [0-9]+k IOPS' "$tmp/report.md" || fail "no alloc-4k row"
echo "PASS"
