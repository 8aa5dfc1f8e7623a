#!/usr/bin/env bash
# The test command (what CI runs): install dependencies, build everything with warnings as errors, run ctest
# (unit tests and multi-rank mpirun tests at np 1, 2, 4).
#
#   scripts/test.sh                       # default build (CUDA on when nvcc exists)
#   WAVEEP_BUILD_DIR=build-nocuda WAVEEP_CMAKE_ARGS="-DWAVEEP_ENABLE_CUDA=OFF" scripts/test.sh
#   CTEST_ARGS="-R kernels" scripts/test.sh
#   WAVEEP_BUILD_TARGETS="runtime_stream_test comm_conformance_test" CTEST_ARGS="-R ^(runtime_stream|comm_)" ...
set -euo pipefail
source "$(dirname "$0")/common.sh"

"$WAVEEP_ROOT/scripts/install_deps.sh" --tests
export WAVEEP_CMAKE_ARGS="-DWAVEEP_WERROR=ON -DBUILD_TESTING=ON ${WAVEEP_CMAKE_ARGS:-}"
# shellcheck disable=SC2086
waveep_build ${WAVEEP_BUILD_TARGETS:-}
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# One test at a time: the machine may have 2 cores and mpirun tests start up to 4 ranks each.
# shellcheck disable=SC2086
ctest --test-dir "$WAVEEP_BUILD_DIR" --output-on-failure --timeout 600 ${CTEST_ARGS:-}
