# fuzz-lib.mk - build the library fuzzers fuzz-engine and fuzz-image with
# clang (GNU make; run as a sub-make from tests/fuzz/fuzz.am, like fuzz.mk).
#
# The sources of lib/ are compiled with libFuzzer's coverage instrumentation,
# ASan, UBSan and -fsanitize=unsigned-integer-overflow (not part of UBSan's
# "undefined": unsigned wrap-around is defined in C, but in the engine's
# offset arithmetic it is the bug of issue 11, item 1).  Every sanitizer
# aborts on its first report.  Intended wraps in lib/ (hashes) are listed,
# one function each with the reason, in uio-ignore.txt.  The harnesses
# themselves are built without the unsigned check: they compute offsets
# past the end of the image (and wrapping ones) on purpose, to test that the
# library refuses them.
#
# Variables (given by fuzz.am):
#   CLANG         clang to use
#   top_srcdir    source tree
#   top_builddir  build tree (for config.h)
#   OUTDIR        where the binaries go, e.g. fuzz
#   LIBS          libraries of the library, from configure (-luring -lev ...)
#   DEP_CFLAGS    their compiler flags, from configure

CLANG ?= clang
OUTDIR ?= fuzz
OBJDIR := $(OUTDIR)/obj-lib
LIBS ?= -luring -lev -lpthread
DEP_CFLAGS ?=
FUZZDIR := $(top_srcdir)/tests/fuzz

SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
UIO := -fsanitize=unsigned-integer-overflow -fno-sanitize-recover=unsigned-integer-overflow \
	-fsanitize-ignorelist=$(FUZZDIR)/uio-ignore.txt
CFLAGS_FUZZ := -std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(SAN) \
	-Wall -Wno-unused-parameter -MMD -MP
CPPFLAGS_FUZZ := -I$(top_builddir) -I$(top_srcdir)/lib/include -I$(top_srcdir)/lib/format -I$(top_srcdir)/lib/io -I$(top_srcdir)/lib/engine -I$(FUZZDIR) $(DEP_CFLAGS)

LIB_SRCS := $(sort $(wildcard $(top_srcdir)/lib/*/*.c))
# Objects keep the folder: $(OBJDIR)/lib/engine/check.o
LIB_OBJS := $(patsubst $(top_srcdir)/lib/%.c,$(OBJDIR)/lib/%.o,$(LIB_SRCS))
TARGETS := $(OUTDIR)/fuzz-engine $(OUTDIR)/fuzz-image

all: $(TARGETS)

$(OUTDIR)/fuzz-%: $(LIB_OBJS) $(OBJDIR)/fuzz-%.o
	@echo "  CLANG-LD $@"
	@$(CLANG) -fsanitize=fuzzer $(SAN) $(UIO) -o $@ $^ $(LIBS)

# Why no comparison tracing in check.c and metadata.c: every open and check
# walks the whole L1 table (up to 8 Mi entries) and each table it finds, and
# libFuzzer's hook on each comparison there took most of the engine target's
# time.  Their branches stay instrumented.
NOCMP_FILES := engine/check engine/metadata
$(foreach f,$(NOCMP_FILES),$(OBJDIR)/lib/$(f).o): NOCMP := -fno-sanitize-coverage=trace-cmp

$(OBJDIR)/lib/%.o: $(top_srcdir)/lib/%.c $(FUZZDIR)/uio-ignore.txt $(FUZZDIR)/fuzz-lib.mk | $(OBJDIR)
	@echo "  CLANG    $@"
	@mkdir -p $(@D)
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) $(UIO) $(NOCMP) -c -o $@ $<

$(OBJDIR)/fuzz-%.o: $(FUZZDIR)/fuzz-%.c | $(OBJDIR)
	@echo "  CLANG    $@"
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) -Wextra -Wshadow -Wstrict-prototypes \
		-Wmissing-prototypes -Werror -c -o $@ $<

$(OBJDIR):
	@mkdir -p $@

.PHONY: all
.SECONDARY: $(LIB_OBJS) $(OBJDIR)/fuzz-engine.o $(OBJDIR)/fuzz-image.o
-include $(LIB_OBJS:.o=.d) $(OBJDIR)/fuzz-engine.d $(OBJDIR)/fuzz-image.d
