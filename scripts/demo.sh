#!/usr/bin/env bash
# Fresh machine -> trained model: install, build the demo corpus from real text, run the data
# pipeline, build the mixture, pretrain with DeepSpeed on two local ranks, print losses and samples.
# Rerunning reuses everything that exists. --chat: the pretrained model, then the chat demo
# (scripts/chat_demo.py: dialogue data, forward and backward models, MMI, English and Chinese),
# ending with the commands that serve each chat model to the browser (megagpt/serve.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh test
. .venv/bin/activate
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ "${1:-}" = "--chat" ]; then
  shift
  python scripts/demo.py --model-only
  exec python scripts/chat_demo.py "$@"
fi
exec python scripts/demo.py "$@"
