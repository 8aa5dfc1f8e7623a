set -x
cd /work/main
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
M="mpirun --oversubscribe --bind-to none"
date -u
for rep in 1 2; do
$M -np 2 build/bin/waveep topo probe --model=tiny --out=/tmp/perfrun/cluster-np2-$rep.json > /tmp/perfrun/probe_np2_$rep.txt 2>&1
$M -np 4 build/bin/waveep topo probe --model=tiny --out=/tmp/perfrun/cluster-np4-$rep.json > /tmp/perfrun/probe_np4_$rep.txt 2>&1
done
$M -np 2 build/bench/waveep_comm_bench --benchmark_counters_tabular=true > /tmp/perfrun/comm_bench_np2.txt 2>&1
$M -np 4 build/bench/waveep_comm_bench --benchmark_counters_tabular=true --comm_bench_max_bytes=16777216 > /tmp/perfrun/comm_bench_np4.txt 2>&1
date -u
