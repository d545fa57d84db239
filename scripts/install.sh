#!/usr/bin/env bash
# Create .venv (if missing) and install megagpt with everything its tools and tests need.
# Without a GPU the CPU build of torch goes in first: a plain requirement could pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mpirun >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev) \
        >/dev/null 2>&1 || echo "warning: could not install OpenMPI (mpirun); mpirun launches will not work" >&2
fi
# Multi-node launches: DeepSpeed's default runner is pdsh over ssh (sshd is only needed on the
# nodes it reaches, and by scripts/loopback_cluster.py for the two-host test on one machine).
missing=()
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing+=(openssh-server)
command -v pdsh >/dev/null 2>&1 || missing+=(pdsh)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
        >/dev/null 2>&1 || echo "warning: could not install ${missing[*]}; multi-node (ssh/pdsh) launches will not work" >&2
fi
# The chat page's browser test drives a headless Chromium (skipped where none is installable).
if [ "${1:-test}" = test ] && ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
        >/dev/null 2>&1 || echo "warning: could not install Chromium; the chat page's browser test will be skipped" >&2
fi
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[${1:-test}]"
# pip builds data_tools/_native.c when a C compiler is there; say which filter path is in use
python -c "from data_tools import native; print('data_tools filters:', native.name())" \
    | grep -q compiled || echo "note: no C compiler: data_tools filters run their numpy/Python code (same decisions, about 3.5x slower)" >&2
