#!/usr/bin/env bash
# Every distillation method on the embedded task, over several seeds, then the mean ± std table.
#
#   launch/demo_methods.sh RUNS_DIR "0 1 2" [METHODS...]     (default: every method of the README)
#   DEMO_ARGS=steps=200 launch/demo_methods.sh ...            (more demo.py arguments for every job)
#
# Per seed it runs the demo job once with method=kd (teacher, baseline student, KD student) and then
# each other method in RUNS_DIR/s<seed>_<method>, with that seed's teacher and baseline linked in:
# the job reads finished stages back (final_metrics.json of the same config), so only the distilled
# student is trained again. Finished jobs (report.json present) are skipped; rerun to resume.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 RUNS_DIR \"SEEDS\" [METHODS...]" >&2; exit 2; }
runs=$1; seeds=$2; shift 2
methods=${*:-nkd nkd_lkkd fd fd+kd fd+nkd fd+nkd_lkkd dkd dist}
python=${PYTHON:-python}
extra=${DEMO_ARGS:+,$DEMO_ARGS}
cd "$(dirname "$0")/.."
mkdir -p "$runs"
for s in $seeds; do
  base=$runs/s${s}_kd
  [ -f "$base/report.json" ] || $python -m lkd_jax.main --config "configs/demo.py:seed=$s,method=kd$extra" --workdir "$base"
  base_abs=$(cd "$base" && pwd)
  for m in $methods; do
    d=$runs/s${s}_$m
    [ -f "$d/report.json" ] && continue
    mkdir -p "$d"
    ln -sfn "$base_abs/teacher" "$d/teacher"
    ln -sfn "$base_abs/student" "$d/student"
    $python -m lkd_jax.main --config "configs/demo.py:seed=$s,method=$m$extra" --workdir "$d"
  done
done
$python -m lkd_jax.report "$runs"/s*_*/
