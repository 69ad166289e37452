#!/bin/bash
# tree-clean.sh - a build leaves `git status` clean (issue 12): every file
# the build makes is ignored by .gitignore.
#
# `git status --porcelain` itself cannot be the test: the user may have
# files of their own in the tree.  Instead, the names of what the build
# makes are asked of the configured Makefiles (programs, libraries, man
# pages, check scripts, CLEANFILES, in every folder of SUBDIRS) and each
# must be ignored (git check-ignore), built or not; and no untracked file
# that git does not ignore may be an object, an archive or an executable
# (ELF) -- those are the build's, whatever their name.
# Skips when the source tree is not a git checkout or git is missing.
#
# Usage: top_srcdir=... top_builddir=... bash tree-clean.sh
# Exit 0 = pass, 1 = fail, 77 = skip.
set -u

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

: "${top_srcdir:?top_srcdir must be set (run through make check)}"
: "${top_builddir:?top_builddir must be set (run through make check)}"
src=$(cd "$top_srcdir" && pwd)
build=$(cd "$top_builddir" && pwd)
command -v git >/dev/null 2>&1 || skip "git is not installed"
git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1 || skip "$src is not a git checkout"
# make check-sanitizers builds a copy of the sources inside the checkout
# (build-san/src), a folder .gitignore rightly ignores whole: the rules
# can only be checked on the checkout itself.
[ "$(git -C "$src" rev-parse --show-toplevel)" = "$(realpath "$src")" ] ||
    skip "$src is not the top of its git checkout (a copy inside one, as in make check-sanitizers)"
[ -f "$build/Makefile" ] || skip "$build is not configured"

# made DIR - what the Makefile in DIR builds, one name a line, relative to DIR.
made() {
    printf 'tree-clean-print:\n\t@echo $(PROGRAMS) $(bin_PROGRAMS) $(check_PROGRAMS) $(LIBRARIES) $(man_MANS) $(check_SCRIPTS) $(CLEANFILES)\n' |
        make -s --no-print-directory -C "$build/$1" -f Makefile -f - tree-clean-print | tr ' ' '\n' |
        sed '/^$/d' | sort -u
}

subdirs=$(printf 'tree-clean-print:\n\t@echo $(SUBDIRS)\n' |
    make -s --no-print-directory -C "$build" -f Makefile -f - tree-clean-print)
list=$(for d in $subdirs; do
    [ "$d" = . ] && continue
    made "$d" | sed "s#^#$d/#"
done)
[ "$(wc -l <<<"$list")" -ge 10 ] || fail "the Makefiles name only a few built files: $list"

# The check must be able to fail: a source file is not ignored.
for p in server/main.c lib/format/header.c tests/run-tests.sh; do
    if git -C "$src" check-ignore -q --no-index -- "$p"; then
        fail "self-check: git check-ignore says the source file $p is ignored"
    fi
done

bad=0
while IFS= read -r p; do
    if ! git -C "$src" check-ignore -q --no-index -- "$p"; then
        echo "not ignored: $p (a file the build makes)"
        bad=1
    fi
done <<<"$list"
echo "checked $(wc -l <<<"$list") names the Makefiles build"

# Untracked and not ignored: none may be an object file, an archive or ELF.
n=0
while IFS= read -r -d '' p; do
    [ -f "$src/$p" ] || continue
    n=$((n + 1))
    case "$p" in
        *.o | *.a | *.so | *.lo | *.la) echo "not ignored: $p (an object or a library)"; bad=1; continue ;;
    esac
    if [ "$(head -c 4 "$src/$p" | od -An -c | tr -d ' ')" = '177ELF' ]; then
        echo "not ignored: $p (an executable)"
        bad=1
    fi
done < <(git -C "$src" ls-files -z --others --exclude-standard)
echo "looked at $n untracked files git does not ignore"

[ "$bad" -eq 0 ] || fail "the build leaves files .gitignore does not cover"
echo "tree-clean: every file the build makes is ignored"
