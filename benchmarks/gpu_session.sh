#!/bin/bash
# A GPU session in few commands (see benchmarks/README.md):
#   bash benchmarks/gpu_session.sh build tests      # correctness: the test files (+ the peer build)
#   bash benchmarks/gpu_session.sh notebooks        # every chapter, alone on the GPU (beside the tests they ran out of memory)
#   bash benchmarks/gpu_session.sh bench sweeps     # timing: the suite, then the sweeps, alone on the GPU
# Phases: build (mamba_ssm's CUDA selective scan, in the background), tests, notebooks, check (= tests and
# notebooks at once; too much for one GPU's memory), bench (waits for the build when selective_scan is timed),
# cmds, sweeps. Each has a time limit in seconds from the environment
# (TESTS_T, NB_T, BENCH_T, SWEEP_T); TEST_JOBS and NB_JOBS set how many run side by side; NOTEBOOKS, BENCH_ARGS
# and SWEEPS narrow a phase; CMDS holds the lines of the "cmds" phase; RESUME=1 makes the tests phase go on from gpu-session/tests.jsonl (a cut run's log:
# carry gpu-session to a fresh machine) instead of starting again. Logs, JSON and the executed notebooks go to gpu-session/; when $OUT is set (the lent
# machine's output folder, which brings back at most 8 files) they are packed after every phase into
# $OUT/session.tar.xz, so that a command cut short still returns what it finished.
set -u
OUTDIR=${SESSION_DIR:-gpu-session}
mkdir -p "$OUTDIR"
pack() {
    [ -n "${OUT:-}" ] && python3 -c "import tarfile,sys; t=tarfile.open(sys.argv[1]+'/session.tar.xz','w:xz'); t.add(sys.argv[2], arcname='gpu-session'); t.close()" "$OUT" "$OUTDIR"
}
T0=$SECONDS
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
if [ -d .whl ]; then  # nbclient, ipykernel and friends, for the notebooks phase
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >/dev/null 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# Triton's compiled kernels in /tmp, which a warm lent machine keeps between commands: the test phase is mostly
# compilation (a test of the SSD kernels at chunk 256 spends ~50 s compiling beside 11 other workers), so a
# resumed test run, the notebooks and the benchmarks of a later command reuse what an earlier one compiled
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/ssm_edu_triton_cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "== setup: $((SECONDS - T0)) s"

# The CUDA peer: loaded from .peers/prebuilt when a file for this torch and GPU is there, else compiled (about
# 3 minutes on 16 cores, on the CPU only, so it may overlap the correctness phases). The compiled module comes
# back compressed in $OUT for the next session (unpack it into .peers/prebuilt/).
# A warm lent machine keeps /tmp between commands (the working tree, .peers included, is sent afresh): the
# module built by an earlier command of the session is copied back from there.
KEEP=/tmp/ssm_edu_prebuilt
mkdir -p .peers/prebuilt "$KEEP" && cp -n "$KEEP"/*.so .peers/prebuilt/ 2>/dev/null
BUILD_PID=""
start_build() {
    [ -n "$BUILD_PID" ] && return
    ( MAX_JOBS=${BUILD_JOBS:-8} python3 - > "$OUTDIR/cuda_build.log" 2>&1 <<'EOF'
import lzma, os, pathlib, time
t = time.time()
from benchmarks import peers
path = peers.prebuilt_path()
fresh = not path.exists()
peers.selective_scan_cuda()
print(f"selective_scan_cuda ready in {time.time() - t:.0f} s ({'compiled' if fresh else 'prebuilt'}): {path.name}")
import shutil; shutil.copy(path, "/tmp/ssm_edu_prebuilt/")
if fresh and os.environ.get("OUT"):  # next to session.tar.xz: the module is 10s of MB
    (pathlib.Path(os.environ["OUT"]) / (path.name + ".xz")).write_bytes(lzma.compress(path.read_bytes(), preset=6))
EOF
    ) &
    BUILD_PID=$!
}

run_tests() {
    python3 -m benchmarks.gpu_tests --jobs "${TEST_JOBS:-8}" --out "$OUTDIR" --limit "${TESTS_T:-540}" \
        ${RESUME:+--resume "$OUTDIR/tests.jsonl"} ${TESTS:-} \
        > "$OUTDIR/tests.stdout" 2>&1
    echo "tests: rc $?"; cat "$OUTDIR/tests.log" 2>/dev/null | head -80
}

run_notebooks() {
    # Output to a file, not a pipe: a notebook cut by the time limit leaves its Jupyter kernel running (kernels
    # start in a session of their own, out of timeout's reach), and a pipe would wait for it; on 2026-12-07 a
    # command hung that way until the lent machine's limit and lost the phase's results. The kernels left are
    # then stopped.
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=${NB_THREADS:-4} timeout -k 20 "${NB_T:-540}" python3 -m benchmarks.notebooks \
        --jobs "${NB_JOBS:-4}" --out "$OUTDIR/notebook_times.json" --save-dir "$OUTDIR/executed" \
        --note "${NB_NOTE:-}" ${NOTEBOOKS:-} > "$OUTDIR/notebooks.raw" 2>&1
    local rc=$?
    pkill -f ipykernel_launcher 2>/dev/null
    grep -v "Kernel is running over TCP" "$OUTDIR/notebooks.raw" > "$OUTDIR/notebooks.log"
    rm -f "$OUTDIR/notebooks.raw"
    echo "notebooks: rc $rc"; grep -E " s  (ok|FAILED)|Error|error" "$OUTDIR/notebooks.log" | head -40
}

for phase in "$@"; do
    start=$SECONDS
    case $phase in
    build) start_build ;;
    tests) run_tests ;;
    notebooks) run_notebooks ;;
    check)
        OMP_NUM_THREADS=${TEST_THREADS:-1} run_tests > "$OUTDIR/tests.summary" 2>&1 &
        TESTS_PID=$!
        run_notebooks
        wait $TESTS_PID
        cat "$OUTDIR/tests.summary" ;;
    bench)
        # the CUDA peer is the selective scan's: wait for it only when that op is in the run (all ops by default)
        if [ -z "${BENCH_ARGS:-}" ] || [[ "${BENCH_ARGS}" == *selective_scan* ]]; then
            start_build; wait "$BUILD_PID"; tail -2 "$OUTDIR/cuda_build.log"
        fi
        # shellcheck disable=SC2086
        timeout "${BENCH_T:-540}" python3 -m benchmarks --out "$OUTDIR/bench.json" ${BENCH_ARGS:-} ;;
    cmds)
        # one shell command a line of $CMDS (a session's short measurements), each followed by a pack, so that
        # a command cut by the lent machine's limit still returns what the earlier lines measured
        while IFS= read -r line; do
            [ -z "$line" ] && continue
            t=$SECONDS; echo "-- $line"
            bash -c "$line"; echo "rc $? in $((SECONDS - t)) s"
            pack
        done <<< "${CMDS:-}" ;;
    sweeps)
        for s in ${SWEEPS:-$(ls benchmarks/sweep_*.py)}; do
            echo "-- $s"  # a sweep writes its own files under $OUT: here, the session folder that gets packed
            OUT="$OUTDIR" timeout "${SWEEP_T:-150}" python3 "$s" 2>&1 | tee "$OUTDIR/$(basename "$s" .py).log" | tail -30
            echo "$s: rc ${PIPESTATUS[0]}"
        done ;;
    *) echo "unknown phase $phase (build, tests, notebooks, check, bench, cmds, sweeps)"; exit 2 ;;
    esac
    echo "== $phase: $((SECONDS - start)) s (total $((SECONDS - T0)) s)"
    pack
done
[ -n "$BUILD_PID" ] && { wait "$BUILD_PID"; tail -2 "$OUTDIR/cuda_build.log"; pack; }
exit 0
