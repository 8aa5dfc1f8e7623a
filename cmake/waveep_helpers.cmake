# Shared build settings and helpers for waveep targets.

set(WAVEEP_WARNINGS -Wall -Wextra -Wshadow -Wno-unused-parameter -Wnon-virtual-dtor)
if(WAVEEP_WERROR)
  list(APPEND WAVEEP_WARNINGS -Werror)
endif()

set(WAVEEP_SANITIZE_FLAGS "")
if(WAVEEP_SANITIZE)
  string(REPLACE ";" "," _waveep_san "${WAVEEP_SANITIZE}")
  set(WAVEEP_SANITIZE_FLAGS -fsanitize=${_waveep_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC's sanitizer instrumentation makes -Wmaybe-uninitialized fire inside Abseil's InlinedVector (false positive,
    # seen with GCC 12 + ASan); the plain build keeps the warning as an error.
    list(APPEND WAVEEP_SANITIZE_FLAGS -Wno-maybe-uninitialized)
  endif()
endif()
if(WAVEEP_FUZZ)
  # Coverage feedback from every library the targets call, plus ASan and UBSan to turn bugs into crashes.
  list(APPEND WAVEEP_SANITIZE_FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
       -fno-sanitize-recover=undefined)
endif()

# waveep_target_defaults(<target>): warnings, sanitizers and MPI's C-only API on a C++ target.
function(waveep_target_defaults target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${WAVEEP_WARNINGS}>
                                           $<$<COMPILE_LANGUAGE:CXX>:${WAVEEP_SANITIZE_FLAGS}>)
  target_compile_definitions(${target} PUBLIC OMPI_SKIP_MPICXX MPICH_SKIP_MPICXX)
  if(WAVEEP_SANITIZE_FLAGS)
    target_link_options(${target} PUBLIC ${WAVEEP_SANITIZE_FLAGS})
  endif()
endfunction()

# waveep_add_library(<name> SOURCES ... DEPS ...): one module = one static library target.
function(waveep_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  waveep_target_defaults(${name})
endfunction()

# waveep_add_test(NAME <n> SOURCES ... DEPS ... [MPI_NP 1 2 4] [LABELS ...] [TIMEOUT s])
# Does nothing unless BUILD_TESTING. Without MPI_NP the test runs as a plain gtest binary; with it, one ctest entry
# per np runs the binary under mpirun (root-safe, oversubscribed: CI has 2 cores and runs as root).
function(waveep_add_test)
  if(NOT BUILD_TESTING)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SOURCES;DEPS;MPI_NP;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock)
  if(NOT ARG_MPI_NP)
    target_link_libraries(${ARG_NAME} PRIVATE GTest::gtest_main)  # MPI tests bring their own main (DEPS)
  endif()
  waveep_target_defaults(${ARG_NAME})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(ARG_MPI_NP)
    foreach(np ${ARG_MPI_NP})
      add_test(NAME ${ARG_NAME}.np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                       ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${ARG_NAME}> ${MPIEXEC_POSTFLAGS})
      waveep_set_mpi_test_env(${ARG_NAME}.np${np})
      set_tests_properties(${ARG_NAME}.np${np} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "mpi;${ARG_LABELS}"
                                                          PROCESSORS ${np})
    endforeach()
  else()
    add_test(NAME ${ARG_NAME} COMMAND ${ARG_NAME})
    set_tests_properties(${ARG_NAME} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "unit;${ARG_LABELS}")
  endif()
endfunction()

# Environment every mpirun-driven test needs: root is allowed (CI), one BLAS thread per rank (2 cores),
# and the shared-memory/TCP transports only (no network probing on CI boxes).
function(waveep_set_mpi_test_env test)
  set(_env "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OPENBLAS_NUM_THREADS=1;OMPI_MCA_rmaps_base_oversubscribe=1;OMPI_MCA_btl=self,vader,tcp;OMPI_MCA_pml=ob1;OMPI_MCA_btl_vader_single_copy_mechanism=none")
  # UCX's memory hooks patch mmap/munmap/brk, which the sanitizers intercept too: under TSan the ucx backend crashed
  # in UCX's init with them on. Its memory-event cache is not needed for host buffers over shared memory and TCP.
  if(WAVEEP_SANITIZE)
    string(APPEND _env ";UCX_MEM_EVENTS=no")
  endif()
  set_tests_properties(${test} PROPERTIES ENVIRONMENT "${_env}")
endfunction()

# Shared main() for gtest binaries run under mpirun (tests/common/mpi_test_main.cc).
function(waveep_add_mpi_test_main)
  if(BUILD_TESTING AND NOT TARGET waveep_mpi_test_main)
    add_library(waveep_mpi_test_main STATIC ${PROJECT_SOURCE_DIR}/tests/common/mpi_test_main.cc)
    target_link_libraries(waveep_mpi_test_main PUBLIC waveep_runtime GTest::gtest)
    waveep_target_defaults(waveep_mpi_test_main)
  endif()
endfunction()
