# waveep_comm_bench: all-to-all-v bandwidth of the comm backends next to plain MPI_Alltoallv (bench/comm_bench.cc).
# Included from bench/CMakeLists.txt. Run under MPI, e.g.
#   mpirun -np 4 --oversubscribe build/bench/waveep_comm_bench --benchmark_counters_tabular=true
add_executable(waveep_comm_bench ${PROJECT_SOURCE_DIR}/bench/comm_bench.cc)
target_link_libraries(waveep_comm_bench PRIVATE waveep_comm benchmark::benchmark)
waveep_target_defaults(waveep_comm_bench)
