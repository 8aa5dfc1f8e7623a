#!/usr/bin/env bash
# Sourced by the job scripts in scripts/slurm/ (sbatch runs a copy of the job script from its spool directory, so
# they find this file, the binary and the plot script through the checkout: WAVEEP_HOME, by default the directory
# the job was submitted from).
#
# Sets WAVEEP (the binary), WAVEEP_OUT (the job's output directory, made here) and defines waveep_srun.

job_die() {
  echo "[waveep-job] error: $*" >&2
  exit 2
}
job_log() { echo "[waveep-job $(date +%H:%M:%S)] $*" >&2; }

[[ -n "${SLURM_JOB_ID:-}" ]] || job_die "not inside a Slurm job (no SLURM_JOB_ID): submit this script with sbatch"

# The binary: $WAVEEP, else the checkout's build, else waveep on PATH.
if [[ -z "${WAVEEP:-}" ]]; then
  if [[ -x "$WAVEEP_HOME/build/bin/waveep" ]]; then
    WAVEEP="$WAVEEP_HOME/build/bin/waveep"
  elif command -v waveep >/dev/null 2>&1; then
    WAVEEP="$(command -v waveep)"
  else
    job_die "no waveep binary: not at $WAVEEP_HOME/build/bin/waveep (build it: scripts/run.sh, or cmake) nor on PATH;" \
      "set WAVEEP=/path/to/waveep (exported to the job: sbatch --export=ALL,WAVEEP=...)"
  fi
fi
[[ -x "$WAVEEP" ]] || job_die "WAVEEP=$WAVEEP is not an executable file"
# The nodes must see the same path: a binary under a node-local directory (/tmp) is a common mistake.
WAVEEP_OUT="${WAVEEP_OUT:-${SLURM_SUBMIT_DIR:-$PWD}/${SLURM_JOB_NAME:-waveep}-$SLURM_JOB_ID}"
mkdir -p "$WAVEEP_OUT"

# srun with the PMIx plugin (what Open MPI needs for direct launch), ending every task when one fails.
waveep_srun() {
  srun --mpi="${WAVEEP_SRUN_MPI:-pmix}" --kill-on-bad-exit=1 "$@"
}

job_log "job $SLURM_JOB_ID: ${SLURM_JOB_NUM_NODES:-?} node(s) [${SLURM_JOB_NODELIST:-?}], ${SLURM_NTASKS:-?} task(s);" \
  "binary $WAVEEP; output $WAVEEP_OUT"
