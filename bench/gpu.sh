#!/usr/bin/env bash
# Every GPU measurement of the throughput work, in one call of under 8 minutes, on a bare GPU host
# that has only torch, transformers, pillow, pandas and click: the other packages come as wheels.
#
#   bash bench/gpu.sh --fetch   # on a machine with the package registry: wheels into bench/wheels
#   bash bench/gpu.sh           # on the GPU host (the device tool: carry bench/wheels); JSON in $OUT
#
# It runs, each under its own time limit:
#   generate          bench/generate.py: HF one image at a time (the naive baseline), HF batched, and
#                     xrq's engine at several batch sizes, fp32 and bf16, eager and compiled
#   pipeline          bench/pipeline.py in-process: files on disk to rows, against decode-only
#   pipeline_celery   the same through a Celery worker (kombu's SQLAlchemy transport and a SQLite
#                     database: a bare host runs no Redis or PostgreSQL)
# DEVICE=cpu QUICK=1 bash bench/gpu.sh runs the same steps small, to check the script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels
# --no-deps below, so every package the imports need is named (numpy, torch ... are on the host).
PACKAGES="celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt_toolkit wcwidth
python-dateutil six tzdata sqlalchemy greenlet typing_extensions alembic mako markupsafe pydicom"

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$WHEELS"
  for version in 3.10 3.11 3.12 3.13; do
    # shellcheck disable=SC2086
    pip download -q --no-deps --only-binary=:all: --python-version "$version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS" $PACKAGES
  done
  du -sh "$WHEELS"
  exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-bench-out}
DEVICE=${DEVICE:-cuda}
TMP=$(mktemp -d)
mkdir -p "$OUT"
if ! "$PY" -c "import celery, sqlalchemy, alembic, pydicom" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-deps --no-index --find-links "$WHEELS" --target "$TMP/deps" $PACKAGES
  export PYTHONPATH="$TMP/deps"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
"$PY" -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" \
  | tee "$OUT/host.txt"
nproc | sed 's/^/cores /' | tee -a "$OUT/host.txt"

if [ -n "${QUICK:-}" ]; then
  PRESET=tiny; SIZES=1,8; STUDIES=16; NAIVE=4; IMAGES=16; TOKENS=8; SECONDS_EACH=5
else
  PRESET=base; SIZES=1,64,256,1024; STUDIES=2048; NAIVE=32; IMAGES=1024; TOKENS=60; SECONDS_EACH=10
fi

step() {  # step NAME SECONDS ARGS...: run one bench under a limit, keep its JSON and log, go on regardless
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most $limit s)"
  timeout "$limit" "$PY" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local rc=$?
  [ $rc -eq 0 ] || echo "$name: exit $rc (see $OUT/$name.log)"
  cat "$OUT/$name.json"
}

step generate 270 bench/generate.py --preset "$PRESET" --device "$DEVICE" --studies "$STUDIES" \
  --naive-studies "$NAIVE" --batch-sizes "$SIZES" --max-new-tokens 60 --compile --seconds "$SECONDS_EACH"
step pipeline 80 bench/pipeline.py --preset "$PRESET" --device "$DEVICE" --max-new-tokens "$TOKENS" \
  --images "$IMAGES" --rounds 2
step pipeline_celery 110 bench/pipeline.py --via celery --preset "$PRESET" --device "$DEVICE" \
  --max-new-tokens "$TOKENS" --images "$IMAGES" --rounds 2 \
  --broker-url "sqla+sqlite:///$TMP/broker.db" --database-url "sqlite:///$TMP/xrq.db"
rm -rf "$TMP"
