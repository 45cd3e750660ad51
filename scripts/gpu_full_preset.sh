#!/usr/bin/env bash
# The full preset on a lent GPU machine (the `device` tool: one command, at most 10 minutes), continuing from the
# cells already published in results/full: every cell that finishes inside LIMIT seconds is published there, and
# the records and students this run added come back as one archive, to unpack and commit here.
#
#   device run:  bash scripts/gpu_full_preset.sh     (LIMIT=520 s, JOBS=8 cells at once; nothing to install: the
#                                                    machine's image has torch and every dependency)
#   afterwards:  tar xzf <files_at>/full_cells.tgz && git add results/full && git commit -m "results: GPU cells"
#
# Cells still running at the limit are lost (each is minutes on a GPU); the next run continues from the published
# ones. To try the script on the CPU: DEVICE=cpu LIMIT=60 JOBS=1 OUT=/tmp/o bash scripts/gpu_full_preset.sh
set -u
LIMIT=${LIMIT:-520}
JOBS=${JOBS:-8}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder whose files come back}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
stamp=$(mktemp)
sleep 1
$PY -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available())"
timeout --signal=INT "$LIMIT" $PY -m danceopd.cli reproduce --preset full --out /tmp/danceopd_full --seed 0 \
  --publish results/full --device "$DEVICE" --jobs "$JOBS" > "$OUT/reproduce.log" 2>&1
echo "reproduce exit status $? (124/130: stopped at the ${LIMIT} s limit)"
find results/full/cells results/full/students -type f -newer "$stamp" -print0 2>/dev/null \
  | tar czf "$OUT/full_cells.tgz" --null -T -
echo "this run published: $(tar tzf "$OUT/full_cells.tgz" | grep -c '\.json$') records," \
     "$(tar tzf "$OUT/full_cells.tgz" | grep -c '\.safetensors$') students"
tr '\r' '\n' < "$OUT/reproduce.log" | grep -E "^reproduce:|Error" | tail -3
