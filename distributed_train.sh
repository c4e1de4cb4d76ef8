#!/usr/bin/env bash
# ./distributed_train.sh NUM_PROC [train.py args...]
#   -> torchrun --standalone --nproc_per_node=NUM_PROC train.py [train.py args...]
# --batch-size is PER PROCESS (as in timm): the global batch is NUM_PROC x --batch-size.
# The process group uses nccl on CUDA and gloo on CPU.
# Extra torchrun options go in TORCHRUN_ARGS, e.g. multi-node or automatic restarts:
#   TORCHRUN_ARGS="--nnodes 2 --node_rank 0 --rdzv-backend c10d --rdzv-endpoint host:29500 --max-restarts 1"
# --standalone (single node, a free rendezvous port of its own) is added unless TORCHRUN_ARGS
# names a rendezvous or master address. PYTHON picks the interpreter (default: the repo's .venv/bin/python
# that `make test` / `make demo` create, else python3), TRAIN_SCRIPT the entry script (default: train.py
# next to this file; tests wrap it).
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: $0 NUM_PROC [train.py args...]   (NUM_PROC >= 1)" >&2
  exit 2
fi
NUM_PROC=$1
shift
VENV_PY="$(dirname "$0")/.venv/bin/python"
if [[ -z "${PYTHON:-}" && -x "$VENV_PY" ]]; then PY=$VENV_PY; else PY=${PYTHON:-python3}; fi
# torchrun shares its rendezvous TCPStore with the workers by default; after a restart
# (--max-restarts) the workers can read the previous attempt's addresses and fail to connect
# (pytorch/pytorch#135712). A store of their own per attempt avoids it.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
read -r -a EXTRA <<< "${TORCHRUN_ARGS:-}"
STANDALONE=(--standalone)
for a in "${EXTRA[@]}"; do
  case "$a" in
    --standalone|--nnodes*|--rdzv-endpoint*|--rdzv_endpoint*|--rdzv-backend*|--rdzv_backend*|--master-addr*|--master_addr*|--master-port*|--master_port*)
      STANDALONE=() ;;
  esac
done
# The arguments are checked once, before any worker starts: a refusal is then one line, not one per
# worker under torchrun's own report.
SNNET_CHECK_WORLD_SIZE=$NUM_PROC "$PY" "${TRAIN_SCRIPT:-$(dirname "$0")/train.py}" "$@" --check-args || exit $?
# exec: this script becomes torchrun, so a SIGKILL of it is one of torchrun, and the workers die
# with torchrun (PR_SET_PDEATHSIG, snnet.distributed.die_with_parent)
exec "$PY" -m torch.distributed.run "${STANDALONE[@]}" --nproc_per_node="$NUM_PROC" "${EXTRA[@]}" \
  "${TRAIN_SCRIPT:-$(dirname "$0")/train.py}" "$@"
