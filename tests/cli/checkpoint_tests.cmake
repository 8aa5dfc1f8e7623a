# `waveep run --checkpoint / --input / --output` end to end (included from tests/cli/CMakeLists.txt).
#
# The fixtures come from scripts/make_test_checkpoint.py (numpy): multi-file checkpoints in DeepSeek, Qwen and
# Mixtral naming, BF16 and FP8 with 128x128 block scales, input files, and one broken copy per bad-file case.
# The driver is tests/cli/checkpoint_cli_test.py; scripts/check_layer.py is run against waveep's --output.

# A python3 that has numpy: the one CMake found, else the distribution's (Debian python3-numpy). A pyenv or venv
# python3 first on PATH often lacks numpy.
set(_waveep_np_python "")
foreach(_py ${Python3_EXECUTABLE} /usr/bin/python3 /usr/local/bin/python3)
  if(_py AND EXISTS "${_py}" AND NOT _waveep_np_python)
    execute_process(COMMAND "${_py}" -c "import numpy" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
    if(_rc EQUAL 0)
      set(_waveep_np_python "${_py}")
    endif()
  endif()
endforeach()

if(NOT _waveep_np_python)
  message(STATUS "waveep: no python3 with numpy; skipping the checkpoint CLI tests (install python3-numpy)")
  return()
endif()
message(STATUS "waveep: checkpoint CLI tests use ${_waveep_np_python}")

set(_ckpt ${CMAKE_CURRENT_BINARY_DIR}/checkpoints)
set(_ckpt_driver ${CMAKE_CURRENT_SOURCE_DIR}/checkpoint_cli_test.py)
add_test(NAME cli_setup_checkpoints
         COMMAND ${_waveep_np_python} ${PROJECT_SOURCE_DIR}/scripts/make_test_checkpoint.py suite ${_ckpt})
set_tests_properties(cli_setup_checkpoints PROPERTIES FIXTURES_SETUP checkpoints LABELS "cli")

foreach(_case np124 checker bytes_read synthetic)
  add_test(NAME cli_checkpoint.${_case}
           COMMAND ${_waveep_np_python} ${_ckpt_driver} ${MPIEXEC_EXECUTABLE} ${_w} ${_ckpt} ${_case})
  waveep_set_mpi_test_env(cli_checkpoint.${_case})
  set_tests_properties(cli_checkpoint.${_case} PROPERTIES TIMEOUT 600 LABELS "mpi;cli" FIXTURES_REQUIRED checkpoints)
endforeach()

foreach(_case header_json truncated header_len dtype shape missing_tensor missing_index_entry missing_file
              missing_scale overlap nan_weight trailing_bytes nested_shape input_wrong_hidden input_idx_out_of_range input_idx_as_float input_no_hidden
              input_missing input_no_routing_no_router checkpoint_missing dense_layer layer_without_checkpoint)
  add_test(NAME cli_checkpoint_bad.${_case}
           COMMAND ${_waveep_np_python} ${_ckpt_driver} ${MPIEXEC_EXECUTABLE} ${_w} ${_ckpt} bad:${_case})
  waveep_set_mpi_test_env(cli_checkpoint_bad.${_case})
  set_tests_properties(cli_checkpoint_bad.${_case} PROPERTIES TIMEOUT 120 LABELS "mpi;cli"
                                                              FIXTURES_REQUIRED checkpoints)
endforeach()
