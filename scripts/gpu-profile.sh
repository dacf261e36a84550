#!/usr/bin/env bash
# Kernel-time breakdown of lathe on the GPU machine with Nsight Systems (when installed there):
#   scripts/gpu-profile.sh [LATHE_BINARY] [MODEL_DIR] -- <lathe bench arguments>
# Prints the top kernels by total time (cuda_gpu_kern_sum), for finding where a step goes.
set -u
LATHE=${1:-/tmp/gpu-check-build/build/bin/lathe}
MODEL=${2:-/tmp/llama3-8b-shape}
shift 2 2>/dev/null || true
[ "${1:-}" = "--" ] && shift
export LD_LIBRARY_PATH="/tmp/gpu-check-build/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -z "$NSYS" ]; then echo "nsys not found: no profile"; exit 0; fi
OUTDIR=${OUT:-/tmp}/profile
mkdir -p "$OUTDIR"
"$NSYS" profile -q -t cuda --cuda-graph-trace=node -o "$OUTDIR/lathe" --force-overwrite true "$LATHE" bench -m "$MODEL" --device cuda "$@" \
  >"$OUTDIR/bench.out" 2>&1 || { echo "profiled run failed"; tail -5 "$OUTDIR/bench.out"; }
"$NSYS" stats -q --report cuda_gpu_kern_sum --format csv "$OUTDIR/lathe.nsys-rep" 2>/dev/null |
  python3 -c '
import csv, sys
rows = list(csv.DictReader(l for l in sys.stdin if l.strip() and not l.startswith("Processing")))
tot = sum(float(r["Total Time (ns)"]) for r in rows) or 1
print(f"{\"kernel\":70} {\"ms\":>9} {\"%\":>6} {\"calls\":>7} {\"avg us\":>8}")
for r in rows[:18]:
    t = float(r["Total Time (ns)"])
    print(f"{r[\"Name\"][:70]:70} {t/1e6:9.2f} {100*t/tot:6.1f} {r[\"Instances\"]:>7} {float(r[\"Avg (ns)\"])/1e3:8.1f}")
'
rm -f "$OUTDIR"/lathe.nsys-rep "$OUTDIR"/lathe.sqlite
