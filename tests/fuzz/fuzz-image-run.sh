#!/bin/bash
# fuzz-image-run.sh - make check: the bounded run of the image fuzzer (see fuzz-lib-run.sh).
exec bash "$(dirname "$0")/fuzz-lib-run.sh" image
