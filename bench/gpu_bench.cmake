# waveep_gpu_gemm_bench: grouped GEMM TFLOP/s on one GPU at the model presets' expert shapes, every backend, next to
# a dense cuBLASLt GEMM of the same FLOPs (bench/gpu_gemm_bench.cc; commands in docs/perf/gpu_plan.md). Included from
# bench/CMakeLists.txt. Built only with CUDA; on a machine without a GPU every benchmark reports SkipWithError.
#   build-gpu/bench/waveep_gpu_gemm_bench --benchmark_filter='V4-Pro/gate_up' --benchmark_format=json
if(WAVEEP_HAVE_CUDA)
  add_executable(waveep_gpu_gemm_bench ${PROJECT_SOURCE_DIR}/bench/gpu_gemm_bench.cc)
  target_link_libraries(waveep_gpu_gemm_bench PRIVATE waveep_kernels benchmark::benchmark CUDA::cudart_static)
  waveep_target_defaults(waveep_gpu_gemm_bench)
endif()
