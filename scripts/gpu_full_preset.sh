#!/usr/bin/env bash
# The full preset on a lent GPU machine (the `device` tool: one command, at most 10 minutes), continuing from the
# cells already published in results/full: every cell that finishes inside its BUDGET is published there, the
# cells still running at the limit are parked (their newest checkpoint, resumable on any machine), and what this
# run added comes back as archives to unpack and commit here:
#
#   device run:  DANCEOPD_GIT_SHA=<short sha of this checkout> bash scripts/gpu_full_preset.sh   (timeout_s 600)
#                BUDGET=560 s for the whole script (smoke, run, park, archives), JOBS=8 cells at once; nothing to
#                install: the machine's image has torch and every dependency
#   afterwards:  for f in <files_at>/*.tgz; do tar xzf $f; done && git add results/full && git commit -m "results: GPU cells"
#                (then delete each parked cell's older checkpoint folders: tar adds the new one beside them)
#   tree size:   the device tool copies at most 64 MiB of working tree; the shipped and published fp16 students
#                (danceopd/assets/students, results/full/students: ~31 MB) are not needed here, move them out
#                for the call and back afterwards
#
# Each setting advances in its own thread (a setting's seeds start as soon as its curves are in) and the cells the
# verdict needs (curves, seeds) take a free worker before the ablations and dense baselines (report/pool.py).
# To try the script on the CPU: DEVICE=cpu BUDGET=200 SMOKE_STEPS=3 JOBS=2 OUT=/tmp/o bash scripts/gpu_full_preset.sh
set -u
start=$(date +%s)
BUDGET=${BUDGET:-560}   # seconds for the whole script: keep it under the device call's timeout_s, or the archives
                        # are never written (the reproduce run gets what the smoke leaves, less RESERVE)
RESERVE=${RESERVE:-75}  # the reproduce run's interrupt grace (30 s), parking and archiving
JOBS=${JOBS:-8}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
SMOKE_STEPS=${SMOKE_STEPS:-100}
KEEP_PARKED=${KEEP_PARKED:-5}   # at most this many parked cells come back (one archive each, ~10 MB; the tool
                                # returns 8 files of at most 16 MiB, 64 MiB in all)
OUT=${OUT:?set OUT to the folder whose files come back}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""
stamp=$(mktemp)
sleep 1
$PY -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# smoke first (a minute): one short DanceOPD and joint-SFT run of setting B and a tiny evaluation on DEVICE, timed;
# a failure ends the call here, before the long run, with the error in the output
for m in danceopd joint_sft; do
  s0=$(date +%s%N)
  timeout 150 $PY -m danceopd.cli distill --config configs/world/B_$m.yaml \
    --set train.steps=$SMOKE_STEPS --set train.checkpoint_every=1000 --out /tmp/smoke_$m --overwrite \
    > "$OUT/smoke_$m.log" 2>&1 \
    || { echo "SMOKE FAILED: distill $m"; tail -25 "$OUT/smoke_$m.log"; exit 1; }
  echo "smoke: $m $SMOKE_STEPS steps in $(( ($(date +%s%N) - s0) / 1000000 )) ms (incl. start-up);" \
       "$(grep -o '"sec_per_step": [0-9.e-]*' /tmp/smoke_$m/*.json 2>/dev/null | head -1)"
done
s0=$(date +%s%N)
timeout 150 $PY -c "from danceopd.report.runner import evaluate_model, device; import json
sc = evaluate_model('/tmp/smoke_danceopd', 'all', 8, 0); sc.pop('items', None)
print(device(), json.dumps(sc)[:300])" > "$OUT/smoke_eval.log" 2>&1 \
  || { echo "SMOKE FAILED: eval"; tail -25 "$OUT/smoke_eval.log"; exit 1; }
echo "smoke: eval n=8 on $(tr '\r' '\n' < "$OUT/smoke_eval.log" | grep -E '^(cpu|cuda) ' | cut -c1-160) in $(( ($(date +%s%N) - s0) / 1000000 )) ms"
t0=$(date +%s)
LIMIT=$(( BUDGET - (t0 - start) - RESERVE ))
[ "$LIMIT" -ge 30 ] || { echo "no time left for the run after the smoke (BUDGET=$BUDGET s)"; exit 1; }
echo "reproduce: $LIMIT s (the script's budget $BUDGET s, $((t0 - start)) s spent, $RESERVE s kept for the end)"
timeout -k 30 --signal=INT "$LIMIT" $PY -m danceopd.cli reproduce --preset full --out /tmp/danceopd_full --seed 0 \
  --publish results/full --device "$DEVICE" --jobs "$JOBS" > "$OUT/reproduce.log" 2>&1
echo "reproduce exit status $? after $(( $(date +%s) - t0 )) s (124/130: stopped at the ${LIMIT} s limit)"
# the cells still running: their newest checkpoints to results/full/parked (cells of the verdict first)
$PY -m danceopd.cli reproduce --preset full --out /tmp/danceopd_full --seed 0 --publish results/full \
  --device "$DEVICE" --park 2>&1 | grep -E "^parked" | tee -a "$OUT/reproduce.log"
find results/full/cells results/full/students -type f -newer "$stamp" -print0 2>/dev/null \
  | tar czf "$OUT/full_cells.tgz" --null -T -
echo "this run published: $(tar tzf "$OUT/full_cells.tgz" | grep -c '\.json$') records," \
     "$(tar tzf "$OUT/full_cells.tgz" | grep -c '\.safetensors$') students"
n=0
for d in $(ls -d results/full/parked/*/ 2>/dev/null | grep -v ablation; ls -d results/full/parked/*/ 2>/dev/null | grep ablation); do
  [ -n "$(find "$d" -newer "$stamp" -type f | head -1)" ] || continue
  [ "$n" -lt "$KEEP_PARKED" ] || { echo "parked, not returned (limit): $d"; continue; }
  n=$((n + 1)); tar czf "$OUT/parked_$n.tgz" "$d" && echo "parked and returned: $d ($(du -h "$OUT/parked_$n.tgz" | cut -f1))"
done
tr '\r' '\n' < "$OUT/reproduce.log" | grep -E "finished \(|^reproduce:|Error" | tail -40
