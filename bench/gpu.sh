#!/usr/bin/env bash
# Every GPU measurement, in one call, on a bare GPU host that has only torch, transformers, pillow,
# pandas, matplotlib and click (as the device tool's H200 has): the other packages come as wheels.
#
#   bash bench/gpu.sh --fetch                  # with the package registry: wheels into bench/wheels (carry it)
#   bash bench/gpu.sh                          # on the GPU host: the throughput steps (under 8 minutes)
#   bash bench/gpu.sh train conditioning       # on the GPU host: the training steps (under 8 minutes)
#
# JSON and logs land in $OUT. The steps, each under its own time limit:
#   generate          bench/generate.py: HF one image at a time (the naive baseline), HF batched, and
#                     xrq's engine at several batch sizes, fp32 and bf16, eager and compiled
#   pipeline          bench/pipeline.py in-process: files on disk to rows, against decode-only
#   pipeline_celery   the same through a Celery worker (kombu's SQLAlchemy transport and a SQLite
#                     database: a bare host runs no Redis or PostgreSQL)
#   train             bench/train.py: the base preset's training images/s and peak memory, bf16 on and off
#   conditioning      bench/conditioning.py --seed 0: `xrq train` twice, `xrq submit`, `xrq evaluate`
# DEVICE=cpu QUICK=1 bash bench/gpu.sh [STEP ...] runs the same steps small, to check the script on a CPU
# (in a venv of another Python, fetch with PY_VERSIONS="3.12 3.11" first).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels
# --no-deps below, so every package the imports need is named (numpy, torch ... are on the host).
PACKAGES="celery kombu billiard vine amqp click-didyoumean click-repl click-plugins prompt_toolkit wcwidth
python-dateutil==2.9.0.post0 six tzdata tzlocal sqlalchemy greenlet typing_extensions alembic mako markupsafe pydicom
nltk"

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$WHEELS"
  # The H200 we are lent runs Python 3.12, and the tree that travels there holds 64 MiB (the
  # repository takes 40): one version, unless PY_VERSIONS names more (for a check on another Python).
  for version in ${PY_VERSIONS:-3.12}; do
    # shellcheck disable=SC2086
    pip download -q --no-deps --only-binary=:all: --python-version "$version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$WHEELS" $PACKAGES
  done
  # pycocoevalcap's wheel is 100 MB of Java jars (METEOR, SPICE, the PTB tokenizer): keep its Python
  # only. BLEU, ROUGE-L and CIDEr need no more; xrq evaluate then says METEOR is unavailable.
  pip download -q --no-deps --only-binary=:all: -d "$WHEELS/.big" pycocoevalcap
  rm -rf "$WHEELS/site/pycocoevalcap"
  mkdir -p "$WHEELS/site"
  unzip -q -o "$WHEELS"/.big/pycocoevalcap-*.whl 'pycocoevalcap/*.py' -d "$WHEELS/site"
  rm -rf "$WHEELS/.big"
  du -sh "$WHEELS"
  exit 0
fi

PY=${PYTHON:-python3}
OUT=${OUT:-bench-out}
DEVICE=${DEVICE:-cuda}
TMP=$(mktemp -d)
mkdir -p "$OUT"
if ! "$PY" -c "import celery, sqlalchemy, alembic, pydicom, nltk, pycocoevalcap" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-deps --no-index --find-links "$WHEELS" --target "$TMP/deps" $PACKAGES \
    || { echo "no wheels for this Python in $WHEELS: run bash bench/gpu.sh --fetch (PY_VERSIONS) first" >&2; exit 1; }
  export PYTHONPATH="$TMP/deps:$PWD/$WHEELS/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
# The `xrq` command, for the benches that run it as a user would (the project is not pip-installed here).
mkdir -p "$TMP/bin"
printf '#!/bin/sh\nexec "%s" -c "from cli.main import main; main()" "$@"\n' "$(command -v "$PY")" > "$TMP/bin/xrq"
chmod +x "$TMP/bin/xrq"
export PATH="$PATH:$TMP/bin"
"$PY" -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" \
  | tee "$OUT/host.txt"
nproc | sed 's/^/cores /' | tee -a "$OUT/host.txt"

if [ -n "${QUICK:-}" ]; then
  PRESET=tiny; SIZES=1,8; STUDIES=16; NAIVE=4; IMAGES=16; TOKENS=8; SECONDS_EACH=5
  TRAIN="--preset tiny --batch-size 4 --steps 3 --skip 1"; CONDITIONING="--size small --steps 10"
else
  PRESET=base; SIZES=1,64,256,1024; STUDIES=2048; NAIVE=32; IMAGES=1024; TOKENS=60; SECONDS_EACH=10
  TRAIN="--preset base --batch-size 32 --steps 12 --skip 2"; CONDITIONING="--size full"
fi
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(generate pipeline pipeline_celery)

step() {  # step NAME SECONDS ARGS...: run one bench under a limit, keep its JSON and log, go on regardless
  local name=$1 limit=$2
  shift 2
  [[ " ${STEPS[*]} " == *" $name "* ]] || return 0
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
# shellcheck disable=SC2086
step train 150 bench/train.py --device "$DEVICE" $TRAIN
# shellcheck disable=SC2086
step conditioning 420 bench/conditioning.py --seed 0 --device "$DEVICE" --json $CONDITIONING
rm -rf "$TMP"
