#!/usr/bin/env bash
# CUDA checks for a GPU machine, over a build made elsewhere with -DLATHE_CUDA=ON.
#
#   scripts/gpu-check.sh --pack [BUILD_DIR]   (on the build machine) bundles the four binaries below
#                                             and their non-system shared libraries into
#                                             carry/gpu-check.tar.xz (~20 MB; carry/ is git-ignored)
#   scripts/gpu-check.sh [BUILD_DIR | carry/gpu-check.tar.xz]   (on the GPU machine, from any directory)
#                                             default: carry/gpu-check.tar.xz if present, else build-cuda
#
# Runs, each under a time limit, logging to $OUT (the device tool's return folder) or /tmp/gpu-check:
#   1. ops_cuda_test     every CUDA op against the scalar reference ("[ worst ]" lines: worst error per op)
#   2. cuda_model_test   every fixture model on the CUDA backend against golden.json
#   3. cuda_ops_bench    GEMV/GEMM/attention timings at Llama-3-8B shapes
#   4. lathe CLI         `lathe score/generate --device cuda` on every fixture case, if bin/lathe exists
#   5. ref perplexity    `lathe perplexity` of models/ref-llama-14m on val.txt, exact and fast, within 1% of the CPU;
#                        also with the q8 (1%) and q4 (2.5%) K/V caches
#   6. quantize on cuda  `lathe quantize --device cuda` and `--device cpu` of models/ref-llama-14m (uniform
#                        4.0 bpw, 8 windows of val.txt): perplexities of the two files within 0.5%
# then prints a summary table. Exit status: 0 when every step that ran passed.
#
# Environment: LATHE_SHARED (fixtures folder; default: the first of ./shared, ./carry/shared,
# /work/shared, ../shared holding fixtures/models), CHECK_TIMEOUT (seconds per step, default 400).
# LD_LIBRARY_PATH gets /usr/local/cuda/lib64, carry/lib and the bundle's lib/ (host libraries built
# against: fmt, gtest, hwy, ...); cuBLAS comes from the GPU machine (its CUDA toolkit, else the
# nvidia-cublas wheel beside PyTorch).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BINARIES=(bin/lathe bin/cuda_ops_bench bin/serve_load tests/ops_cuda/ops_cuda_test tests/ops_cuda/cuda_model_test)

if [ "${1:-}" = "--pack" ]; then
  BUILD=${2:-build-cuda}
  stage=$(mktemp -d)
  mkdir -p "$stage/build" "$stage/lib"
  for b in "${BINARIES[@]}"; do
    [ -x "$BUILD/$b" ] || { echo "missing $BUILD/$b (build it first)"; continue; }
    mkdir -p "$stage/build/$(dirname "$b")"
    cp "$BUILD/$b" "$stage/build/$b"
    # Shared libraries except the C/C++ runtime (the GPU machine's are as new or newer) and CUDA's own.
    ldd "$BUILD/$b" | awk '$3 ~ /^\// {print $3}' |
      grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|libcu(blas|blasLt|dart|solver|sparse)|libnvJitLink' |
      while read -r lib; do cp -L -n "$lib" "$stage/lib/"; done
  done
  mkdir -p carry
  # xz -9 (64 MB dictionary): the four binaries each embed every kernel, and only a window larger than
  # one binary lets xz store those kernels once; gzip or xz -6 would make the bundle too big to carry.
  XZ_OPT="-T0 -9" tar cJf carry/gpu-check.tar.xz -C "$stage" build lib
  rm -rf "$stage"
  echo "packed: $(ls -la carry/gpu-check.tar.xz | awk '{print $5}') bytes in carry/gpu-check.tar.xz"
  tar tJf carry/gpu-check.tar.xz | sed 's/^/  /'
  exit 0
fi

BUILD=${1:-}
if [ -z "$BUILD" ]; then
  if [ -f carry/gpu-check.tar.xz ]; then BUILD=carry/gpu-check.tar.xz; else BUILD=build-cuda; fi
fi
if [ -f "$BUILD" ]; then  # a --pack bundle
  unpack=/tmp/gpu-check-build
  rm -rf "$unpack" && mkdir -p "$unpack" && tar xf "$BUILD" -C "$unpack" || { echo "cannot unpack $BUILD"; exit 2; }
  export LD_LIBRARY_PATH="$unpack/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  BUILD="$unpack/build"
fi
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
LOGS=${OUT:-/tmp/gpu-check}
mkdir -p "$LOGS"
TIMEOUT=${CHECK_TIMEOUT:-400}

export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d "$ROOT/carry/lib" ] && export LD_LIBRARY_PATH="$ROOT/carry/lib:$LD_LIBRARY_PATH"
if [ ! -e /usr/local/cuda/lib64/libcublas.so.13 ] && command -v python3 >/dev/null; then
  wheel_lib=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$wheel_lib" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$wheel_lib"
fi
if [ -z "${LATHE_SHARED:-}" ]; then
  for d in "$ROOT/shared" "$ROOT/carry/shared" /work/shared "$ROOT/../shared"; do
    if [ -d "$d/fixtures/models" ]; then LATHE_SHARED=$(cd "$d" && pwd); break; fi
  done
fi
export LATHE_SHARED=${LATHE_SHARED:-}

echo "== gpu-check: build $BUILD, fixtures ${LATHE_SHARED:-<none found>}, logs $LOGS"
nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
if [ -x "$BUILD/tests/ops_cuda/ops_cuda_test" ] && ldd "$BUILD/tests/ops_cuda/ops_cuda_test" | grep -q "not found"; then
  echo "!! unresolved shared libraries:"; ldd "$BUILD/tests/ops_cuda/ops_cuda_test" | grep "not found"
fi

NAMES=() STATUS=() SECS=() NOTES=()
FAILED=0
record() {  # name status seconds note
  NAMES+=("$1") STATUS+=("$2") SECS+=("$3") NOTES+=("$4")
  [ "$2" = FAIL ] && FAILED=1
}

# run_step NAME LOG CMD...: runs CMD with the time limit, output to the console and LOG.
run_step() {
  local name=$1 log=$2
  shift 2
  if [ ! -x "$1" ]; then
    record "$name" SKIP 0 "not built: $1"
    return
  fi
  echo
  echo "== $name: $*"
  local t0=$SECONDS rc
  timeout "$TIMEOUT" "$@" >"$log" 2>&1
  rc=$?
  cat "$log"
  local dt=$((SECONDS - t0)) note=""
  [ $rc -eq 124 ] && note="timed out after ${TIMEOUT}s"
  [ $rc -ne 0 ] && [ -z "$note" ] && note="exit $rc"
  local skipped
  skipped=$(grep -m1 -oE "^\[  SKIPPED \] [0-9]+ test" "$log" | grep -oE "[0-9]+")
  [ -n "$skipped" ] && note="${note:+$note; }$skipped skipped (see log)"
  if [ $rc -eq 0 ]; then record "$name" PASS "$dt" "$note"; else record "$name" FAIL "$dt" "$note"; fi
}

run_step ops_cuda_test "$LOGS/ops_cuda_test.log" "$BUILD/tests/ops_cuda/ops_cuda_test" --gtest_color=no
run_step cuda_model_test "$LOGS/cuda_model_test.log" "$BUILD/tests/ops_cuda/cuda_model_test" --gtest_color=no
BENCH="$BUILD/bin/cuda_ops_bench"
[ -x "$BENCH" ] || BENCH="$BUILD/tests/ops_cuda/cuda_bench/cuda_ops_bench"
run_step cuda_ops_bench "$LOGS/cuda_ops_bench.log" "$BENCH"

# ---- lathe CLI on the fixtures: score NLL within 3e-2, first 8 greedy ids ------------------------
LATHE="$BUILD/bin/lathe"
if [ -x "$LATHE" ] && [ -n "$LATHE_SHARED" ] && command -v python3 >/dev/null; then
  echo
  echo "== lathe CLI golden checks (--device cuda)"
  t0=$SECONDS
  LATHE="$LATHE" timeout "$TIMEOUT" python3 - "$LATHE_SHARED/fixtures/models" >"$LOGS/lathe_cli.log" 2>&1 <<'PY'
import json, os, subprocess, sys
models, lathe = sys.argv[1], os.environ["LATHE"]
bad = 0
for arch in sorted(os.listdir(models)):
    gpath = os.path.join(models, arch, "golden.json")
    if not os.path.exists(gpath):
        continue
    for i, case in enumerate(json.load(open(gpath))["cases"]):
        ids = ",".join(map(str, case["ids"]))
        d = os.path.join(models, arch)
        r = subprocess.run([lathe, "score", "-m", d, "--ids", ids, "--json", "--device", "cuda"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL {arch}[{i}] score: {r.stderr.strip()}"); bad += 1; continue
        nll = json.loads(r.stdout)["nll"]
        err = max(abs(a - b) for a, b in zip(nll, case["nll"])) if nll else 0.0
        g = subprocess.run([lathe, "generate", "-m", d, "--ids", ids, "-n", "8", "--temperature", "0",
                            "--ignore-eos", "--json", "--device", "cuda"], capture_output=True, text=True)
        if g.returncode != 0:
            print(f"FAIL {arch}[{i}] generate: {g.stderr.strip()}"); bad += 1; continue
        got, want = json.loads(g.stdout)["ids"][:8], case["greedy_ids"][:8]
        margin = case["greedy_min_margin"]
        greedy = "ok" if got == want else ("near-tie flip (margin %.2g)" % margin if margin < 3e-2 else "MISMATCH")
        ok = err < 3e-2 and greedy != "MISMATCH"
        bad += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {arch:12s}[{i}] {len(case['ids']):3d} tokens  nll err {err:.2e}  greedy8 {greedy}")
print(f"lathe CLI: {bad} failing case(s)")
sys.exit(1 if bad else 0)
PY
  rc=$?
  cat "$LOGS/lathe_cli.log"
  if [ $rc -eq 0 ]; then record "lathe CLI golden" PASS $((SECONDS - t0)) ""; else record "lathe CLI golden" FAIL $((SECONDS - t0)) "exit $rc"; fi
else
  record "lathe CLI golden" SKIP 0 "needs $LATHE, fixtures and python3"
fi

# ---- reference model perplexity on val.txt: CUDA exact and fast (bf16 K/V) within 1% of the CPU's ----
REF="$LATHE_SHARED/models/ref-llama-14m"
VAL="$LATHE_SHARED/data/text/val.txt"
if [ -x "$LATHE" ] && [ -f "$REF/reference.json" ] && [ -f "$VAL" ] && command -v python3 >/dev/null; then
  echo
  echo "== reference model perplexity (--device cuda, exact and fast, bf16/f32 and quantized K/V)"
  t0=$SECONDS
  LATHE="$LATHE" timeout "$TIMEOUT" python3 - "$REF" "$VAL" >"$LOGS/perplexity.log" 2>&1 <<'PY'
import json, os, subprocess, sys
ref, val, lathe = sys.argv[1], sys.argv[2], os.environ["LATHE"]
want = json.load(open(os.path.join(ref, "reference.json")))["val_ppl_ctx512"]
bad = 0
# (precision, --kv-cache, tolerance): the quantized caches within what the CPU measured plus margin
# (tests/engine/kv_quant_engine_test.cpp: q8 +0.00%, q4 +0.29% on 4 windows).
for precision, kv, tol in (("exact", "auto", 0.01), ("fast", "auto", 0.01), ("exact", "q8", 0.01), ("fast", "q8", 0.01),
                           ("fast", "q4", 0.025)):
    r = subprocess.run([lathe, "perplexity", "-m", ref, "-f", val, "--device", "cuda", "--precision", precision,
                        "--kv-cache", kv, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"FAIL {precision} kv {kv}: {r.stderr.strip()}"); bad += 1; continue
    j = json.loads(r.stdout)
    rel = abs(j["ppl"] / want - 1)
    ok = rel < tol
    bad += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} {precision:5s} kv {kv:4s} ppl {j['ppl']:.5f} vs CPU/transformers {want:.5f} "
          f"({100 * (j['ppl'] / want - 1):+.3f}%) in {j['seconds']:.1f} s")
sys.exit(1 if bad else 0)
PY
  rc=$?
  cat "$LOGS/perplexity.log"
  if [ $rc -eq 0 ]; then record "ref perplexity" PASS $((SECONDS - t0)) ""; else record "ref perplexity" FAIL $((SECONDS - t0)) "exit $rc"; fi
else
  record "ref perplexity" SKIP 0 "needs $LATHE, models/ref-llama-14m, data/text/val.txt and python3"
fi

# ---- quantization with the calibration on the GPU: the same file quality as on the CPU ----------------
if [ -x "$LATHE" ] && [ -f "$REF/config.json" ] && [ -f "$VAL" ] && command -v python3 >/dev/null; then
  echo
  echo "== lathe quantize --device cuda vs cpu (uniform 4.0 bpw, 8 windows)"
  t0=$SECONDS
  LATHE="$LATHE" timeout "$TIMEOUT" python3 - "$REF" "$VAL" >"$LOGS/quantize.log" 2>&1 <<'PY'
import json, os, subprocess, sys, tempfile, time
ref, val, lathe = sys.argv[1], sys.argv[2], os.environ["LATHE"]
ppl = {}
with tempfile.TemporaryDirectory() as tmp:
    for device in ("cuda", "cpu"):
        out = os.path.join(tmp, device)
        t = time.time()
        r = subprocess.run([lathe, "quantize", "-m", ref, "-o", out, "--uniform", "--bpw", "4.0", "--calib", val,
                            "--calib-rows", "8", "--device", device, "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL quantize --device {device}: {r.stderr.strip()}"); sys.exit(1)
        secs = time.time() - t
        r = subprocess.run([lathe, "perplexity", "-m", out, "-f", val, "--max-windows", "40", "--device", "cuda", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL perplexity of the {device} file: {r.stderr.strip()}"); sys.exit(1)
        ppl[device] = json.loads(r.stdout)["ppl"]
        print(f"quantize --device {device}: {secs:.1f} s, ppl (40 windows) {ppl[device]:.5f}")
rel = abs(ppl["cuda"] / ppl["cpu"] - 1)
print(f"{'ok  ' if rel < 0.005 else 'FAIL'} cuda vs cpu file: {100 * rel:.3f}% apart")
sys.exit(0 if rel < 0.005 else 1)
PY
  rc=$?
  cat "$LOGS/quantize.log"
  if [ $rc -eq 0 ]; then record "quantize on cuda" PASS $((SECONDS - t0)) ""; else record "quantize on cuda" FAIL $((SECONDS - t0)) "exit $rc"; fi
else
  record "quantize on cuda" SKIP 0 "needs $LATHE, models/ref-llama-14m, data/text/val.txt and python3"
fi

# ---- summary ----------------------------------------------------------------------------------------
{
  echo
  echo "== summary"
  printf "  %-20s %-6s %6s  %s\n" step status secs note
  for i in "${!NAMES[@]}"; do printf "  %-20s %-6s %6s  %s\n" "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"; done
  if [ -f "$LOGS/ops_cuda_test.log" ]; then echo; echo "  worst errors (ops_cuda_test):"; grep -h "^\[ worst \]" "$LOGS/ops_cuda_test.log" | sed 's/^/    /'; fi
  if [ -f "$LOGS/cuda_model_test.log" ]; then echo; echo "  fixtures (cuda_model_test):"; grep -h -E "^\[ (golden|note) \]" "$LOGS/cuda_model_test.log" | sed 's/^/    /'; fi
  if [ -f "$LOGS/perplexity.log" ]; then echo; echo "  reference perplexity:"; sed 's/^/    /' "$LOGS/perplexity.log"; fi
  if [ -f "$LOGS/quantize.log" ]; then echo; echo "  quantize on cuda:"; sed 's/^/    /' "$LOGS/quantize.log"; fi
  if [ -f "$LOGS/ops_cuda_test.log" ] || [ -f "$LOGS/cuda_model_test.log" ]; then
    echo; echo "  failed tests:"; grep -h "^\[  FAILED  \]" "$LOGS"/ops_cuda_test.log "$LOGS"/cuda_model_test.log 2>/dev/null | sort -u | sed 's/^/    /' || true
  fi
} | tee "$LOGS/summary.txt"
exit $FAILED
