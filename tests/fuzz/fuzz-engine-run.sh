#!/bin/bash
# fuzz-engine-run.sh - make check: the bounded run of the engine fuzzer (see fuzz-lib-run.sh).
exec bash "$(dirname "$0")/fuzz-lib-run.sh" engine
