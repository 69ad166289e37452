#!/bin/bash
# The man pages qednbd(8) and qed-img(1):
#   - the POD sources pass podchecker, and the built pages render with groff
#     without warnings;
#   - every option `qednbd --help` lists (long and short) is documented in
#     qednbd(8), and every signal, the statistics fields and the TLS files
#     are there; every qed-img command and option of `qed-img --help` is in
#     qed-img(1);
#   - `make install` puts them under $(mandir)/man8 and man1.
. "$top_srcdir/tests/prod/prod-common.sh"
doc_src="$top_srcdir/doc"
doc_build="$top_builddir/doc"
for p in qednbd.8 qed-img.1; do
    [ -s "$doc_build/$p" ] || fail "$doc_build/$p is not built (make builds it)"
done

if command -v podchecker >/dev/null 2>&1; then
    for p in qednbd.pod qed-img.pod; do
        podchecker "$doc_src/$p" >pod.out 2>&1 || { cat pod.out; fail "podchecker $p"; }
        grep -qi "warning" pod.out && { cat pod.out; fail "podchecker warns about $p"; }
    done
else
    note "podchecker is not installed: POD syntax not checked"
fi

# render PAGE - the page as plain text (groff when there is one, else man).
render() {
    if command -v groff >/dev/null 2>&1; then
        # -rHY=0: no hyphenation, so that words can be searched for.
        groff -man -Tutf8 -ww -rHY=0 -rLL=200n "$1" 2>render.err | sed 's/.\x08//g'
        if [ -s render.err ]; then
            cat render.err >&2
            fail "groff warns about $1"
        fi
    elif command -v man >/dev/null 2>&1; then
        MANWIDTH=200 man -l "$1" 2>/dev/null | sed 's/.\x08//g'
    else
        skip "neither groff nor man is installed"
    fi
}
render "$doc_build/qednbd.8" >qednbd.txt
render "$doc_build/qed-img.1" >qed-img.txt
[ -s qednbd.txt ] && [ -s qed-img.txt ] || fail "a page renders empty"
# One line, single spaces, plain quotes: phrases broken across lines match too.
tr '\n' ' ' <qednbd.txt | tr -s ' ' | sed 's/[“”]/"/g' >qednbd.flat
grep -q "qednbd - serve QED disk images" qednbd.txt || fail "qednbd(8) has no NAME line"

# Every option of --help, long and short, must appear in the page.
"$QEDNBD" --help >help.txt || fail "qednbd --help failed"
longs=$(grep -oE -- '--[a-z][a-z0-9-]+' help.txt | sort -u)
[ "$(wc -l <<<"$longs")" -ge 25 ] || fail "only $(wc -l <<<"$longs") long options in --help?"
for o in $longs; do
    grep -qF -- "$o" qednbd.txt || fail "qednbd(8) does not document $o"
done
for o in $(grep -oE '^  -[a-zA-Z],' help.txt | tr -d ' ,'); do
    grep -qE -- "(^|[^a-z-])$o([^a-z-]|$)" qednbd.txt || fail "qednbd(8) does not document $o"
done
for w in SIGHUP SIGUSR1 SIGTERM LISTEN_FDS NOTIFY_SOCKET server-cert.pem server-key.pem \
         ca-cert.pem psktool ERR_TLS_REQD clusters_appended bytes_written tls_failures \
         NEED_CHECK "kill -9" "Failed to get"; do
    grep -qF -- "$w" qednbd.flat || fail "qednbd(8) does not mention $w"
done

"$QEDIMG" --help >imghelp.txt || fail "qed-img --help failed"
for c in create info check map resize; do
    grep -qE "^ +(qed-img )?$c" qed-img.txt || fail "qed-img(1) does not describe $c"
done
for o in $(grep -oE -- '(^| |\[)-{1,2}[a-zA-Z][a-z-]*' imghelp.txt | tr -d ' [' | sort -u); do
    grep -qF -- "$o" qed-img.txt || fail "qed-img(1) does not document $o"
done

note "make install"
make -C "$top_builddir/doc" install DESTDIR="$tmp/inst" prefix=/usr mandir=/usr/share/man \
    >install.log 2>&1 || { cat install.log; fail "make install in doc/ failed"; }
[ -s "$tmp/inst/usr/share/man/man8/qednbd.8" ] || fail "qednbd.8 not installed"
[ -s "$tmp/inst/usr/share/man/man1/qed-img.1" ] || fail "qed-img.1 not installed"
cmp "$tmp/inst/usr/share/man/man8/qednbd.8" "$doc_build/qednbd.8" || fail "installed page differs"
echo PASS
