# fuzz.mk - build the libFuzzer target fuzz-nbd with clang (GNU make).
#
# Not an automake fragment: tests/fuzz/fuzz.am runs it as a sub-make, so it
# may use pattern rules and $(wildcard), which automake would refuse.  Every
# source of lib/ and server/ (whatever files they hold: new ones are picked
# up) and the harness are compiled with clang's coverage instrumentation
# and ASan/UBSan, then linked with libFuzzer.
#
# Variables (given by fuzz.am):
#   CLANG         clang to use
#   top_srcdir    source tree
#   top_builddir  build tree (for config.h)
#   OUT           output binary, e.g. fuzz/fuzz-nbd
#   LIBS          libraries of the server, from configure (-luring -lev ...)
#   DEP_CFLAGS    their compiler flags, from configure (GnuTLS, liburing)
#
# By hand:  make -f .../tests/fuzz/fuzz.mk CLANG=clang top_srcdir=... \
#               top_builddir=... OUT=fuzz-nbd \
#               LIBS="-luring -lev -lpthread $(pkg-config --libs gnutls)"

CLANG ?= clang
OUT ?= fuzz/fuzz-nbd
OBJDIR := $(dir $(OUT))obj
LIBS ?= -luring -lev -lpthread
DEP_CFLAGS ?=

SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
CFLAGS_FUZZ := -std=gnu11 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link $(SAN) \
	-Wall -Wno-unused-parameter -MMD -MP
CPPFLAGS_FUZZ := -I$(top_builddir) -I$(top_srcdir)/lib/include -I$(top_srcdir)/lib/format -I$(top_srcdir)/lib/io -I$(top_srcdir)/lib/engine -I$(top_srcdir)/server $(addprefix -I,$(wildcard $(top_srcdir)/server/*/)) $(DEP_CFLAGS)

LIB_SRCS := $(sort $(wildcard $(top_srcdir)/lib/*/*.c))
SRV_SRCS := $(filter-out %/server/main.c %/server/qednbd-ctl.c,$(sort $(wildcard $(top_srcdir)/server/*.c $(top_srcdir)/server/*/*.c)))
# Objects keep the folder: $(OBJDIR)/lib/engine/check.o, $(OBJDIR)/srv/net/conn.o
LIB_OBJS := $(patsubst $(top_srcdir)/lib/%.c,$(OBJDIR)/lib/%.o,$(LIB_SRCS))
SRV_OBJS := $(patsubst $(top_srcdir)/server/%.c,$(OBJDIR)/srv/%.o,$(SRV_SRCS))
OBJS := $(LIB_OBJS) $(SRV_OBJS) $(OBJDIR)/srv/main.o $(OBJDIR)/fuzz-nbd.o

$(OUT): $(OBJS)
	@echo "  CLANG-LD $@"
	@$(CLANG) -fsanitize=fuzzer $(SAN) -o $@ $(OBJS) $(LIBS)

$(OBJDIR)/lib/%.o: $(top_srcdir)/lib/%.c | $(OBJDIR)
	@echo "  CLANG    $@"
	@mkdir -p $(@D)
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) -c -o $@ $<

$(OBJDIR)/srv/%.o: $(top_srcdir)/server/%.c | $(OBJDIR)
	@echo "  CLANG    $@"
	@mkdir -p $(@D)
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) -c -o $@ $<

# main.c provides srv (srv_find_export is in exports.c, srv_conn_gone in
# net/listen.c); its main() is renamed out of libFuzzer's way (the harness
# never calls it).
$(OBJDIR)/srv/main.o: $(top_srcdir)/server/main.c | $(OBJDIR)
	@echo "  CLANG    $@"
	@mkdir -p $(@D)
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) -Dmain=qednbd_main -Wno-missing-prototypes \
		-c -o $@ $<

$(OBJDIR)/fuzz-nbd.o: $(top_srcdir)/tests/fuzz/fuzz-nbd.c | $(OBJDIR)
	@echo "  CLANG    $@"
	@$(CLANG) $(CPPFLAGS_FUZZ) $(CFLAGS_FUZZ) -Wextra -Wshadow -Wstrict-prototypes \
		-Wmissing-prototypes -Werror -c -o $@ $<

$(OBJDIR):
	@mkdir -p $@

-include $(OBJS:.o=.d)
