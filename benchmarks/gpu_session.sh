#!/bin/bash
# A GPU session in one command (see benchmarks/README.md):  bash benchmarks/gpu_session.sh tests notebooks bench sweeps
# Each phase has its own time limit (seconds, from the environment): TESTS_T, NB_T, BENCH_T, SWEEP_T.
set -u
OUTDIR=${OUT:-gpu-session}
mkdir -p "$OUTDIR"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
if [ -d .whl ]; then  # nbclient, ipykernel and friends, for the notebooks phase
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >/dev/null 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

GPU_TESTS="test_scan test_convolution test_s4 test_selective test_state_update test_ssd test_mamba3 test_mamba
test_mamba2 test_mamba3_block test_dispatch test_delta test_attention test_inference"
for phase in "$@"; do
    start=$SECONDS
    case $phase in
    tests)
        for t in $GPU_TESTS; do
            timeout "${TESTS_T:-240}" python3 -m pytest -o addopts="" -p no:cacheprovider -q --tb=short -rfE \
                "tests/$t.py" > "$OUTDIR/pytest-$t.log" 2>&1
            echo "tests/$t.py: rc $? $(grep -E '[0-9]+ (passed|failed)' "$OUTDIR/pytest-$t.log" | tail -1)"
        done
        cat "$OUTDIR"/pytest-*.log > "$OUTDIR/pytest.log"; rm -f "$OUTDIR"/pytest-*.log
        grep -E "^(FAILED|ERROR)" "$OUTDIR/pytest.log" | head -40 ;;
    notebooks)
        timeout "${NB_T:-1500}" python3 -m benchmarks.notebooks --out "$OUTDIR/notebook_times.json" \
            --note "${NB_NOTE:-}" 2>&1 | grep -v "Kernel is running over TCP" ;;
    bench)
        python3 -c "from benchmarks import peers; peers.selective_scan_cuda()" > "$OUTDIR/cuda_build.log" 2>&1 \
            || echo "mamba_ssm CUDA build failed (its rows will say missing): see cuda_build.log"
        timeout "${BENCH_T:-900}" python3 -m benchmarks --out "$OUTDIR/bench.json" ;;
    sweeps)
        timeout "${SWEEP_T:-200}" python3 benchmarks/sweep_selective.py ;;
    *) echo "unknown phase $phase (tests, notebooks, bench, sweeps)"; exit 2 ;;
    esac
    echo "== $phase: $((SECONDS - start)) s"
done
