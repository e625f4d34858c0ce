#!/bin/bash
# The GPU checks of a lent device machine, as one command (tools/device/README.md says how to call it).
# Needs: /tmp/cifar staged by the first call (tools/device/stage.sh), .gpudata2 and .whl carried.
# Prints and writes to $OUT: benchmarks.gpu_check of the default config (its featvis PNGs, timeline included,
# kept under logs/default_run; with SPEEDRUN=1 also the speedrun overlay's, each alone on the GPU, timed), the anchor's CUDA
# copy, benchmarks.time_to_accuracy (the default beside the anchor's CUDA copy), issue 15's pictures on the
# default run's last epoch (PICTURES=0 skips them), then SWEEP rows in parallel (accuracy only; timings shared).
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
T0=$SECONDS; BUDGET=${BUDGET:-480}
[ -f /tmp/cifar/cifar-10-batches-py/data_batch_1 ] || { echo "the first half of the data is missing: run stage.sh first"; exit 3; }
[ -d /tmp/site/jsonargparse ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 tools/device/pack_cifar.py unpack .gpudata2 /tmp/cifar/cifar-10-batches-py || exit 1
D=/tmp/cifar; L=/tmp/logs; mkdir -p $L
finish() { tar czf $OUT/logs.tgz --exclude='*.ckpt' -C /tmp logs; ls -la $OUT; }
trap finish EXIT
left() { echo $(( BUDGET - (SECONDS - T0) )); }
python3 -m pytest -q -p no:cacheprovider tests/test_warm.py 2>&1 | tail -2   # the CUDA-only tests
# The speedrun overlay (measured on 2026-11-29) only with SPEEDRUN=1, to leave time for the pictures below.
RUNS=("default:"); [ "${SPEEDRUN:-0}" = 1 ] && RUNS+=("speedrun:--config configs/cifar10_speedrun.yaml")
for run in "${RUNS[@]}"; do
  name=${run%%:*}
  timeout 200 python3 -m benchmarks.gpu_check --data $D --json $L/gpu_check_$name.json --log-dir $L/${name}_run \
    --fit-args "${run#*:}" > $L/gpu_check_$name.log 2>&1
  echo "gpu_check $name rc=$? at $((SECONDS-T0)) s"; grep -v -i warn $L/gpu_check_$name.log | grep -A40 "^Default config on"
done
[ -f .gpu/anchor_cuda.py ] && timeout 60 python3 .gpu/anchor_cuda.py --data $D --seed 0 > $L/anchor_s0.log 2>&1
tail -1 $L/anchor_s0.log 2>/dev/null
# The side-by-side table of issue 14: the default config, then the anchor's CUDA copy, in one invocation.
if [ -f .gpu/anchor_cuda.py ]; then
  timeout 300 python3 -m benchmarks.time_to_accuracy --data $D --anchor .gpu/anchor_cuda.py \
    --json $L/time_to_accuracy.json > $L/time_to_accuracy.log 2>&1
  echo "time_to_accuracy rc=$? at $((SECONDS-T0)) s"; grep -A12 "^Time to accuracy on" $L/time_to_accuracy.log
fi
# Issue 15 on the default run's last epoch: a reader of its own strength (the default config, seed 1), then the
# ablation's rows on the default run's last.ckpt and its per-epoch pictures, both read by it.
# Both score on the CPU (the machine's 16 cores): the benchmarks load checkpoints there.
if [ "${PICTURES:-1}" = 1 ] && [ "$(left)" -gt 150 ]; then
  timeout 150 python3 -m benchmarks.gpu_check --data $D --log-dir $L/reader_run --json $L/gpu_check_reader.json \
    --fit-args "--seed_everything 1 --data.seed 1 --featvis.sheets null" > $L/gpu_check_reader.log 2>&1
  echo "reader rc=$? at $((SECONDS-T0)) s"
  TARGET=$(ls $L/default_run/*/version_0/checkpoints/last.ckpt | head -1)
  READER=$(ls $L/reader_run/*/version_0/checkpoints/last.ckpt | head -1)
  OMP_NUM_THREADS=16 timeout $(( $(left) - 10 )) python3 -m benchmarks.ablation --ckpt "$TARGET" --refs "$READER" --data-dir $D \
    --diversity-layer net.group1 --only "(defaults)" "1/f" "phase-only" --json $L/ablation_last_epoch.json \
    > $L/ablation_last_epoch.log 2>&1
  echo "ablation rc=$? at $((SECONDS-T0)) s"; grep "^|" $L/ablation_last_epoch.log
  OMP_NUM_THREADS=16 timeout $(( $(left) - 5 )) python3 -m benchmarks.quality score-run --run "$(dirname "$(dirname "$TARGET")")" \
    --refs "$READER" --data-dir $D --json $L/score_run.json > $L/score_run.log 2>&1
  echo "score-run rc=$? at $((SECONDS-T0)) s"; grep "^|" $L/score_run.log
fi
# SWEEP: one row per line, "name|featvis fit arguments" (layered over the default config, as gpu_check does).
while IFS='|' read -r name args; do
  [ -n "$name" ] || continue
  timeout $(( $(left) - 20 )) python3 -m benchmarks.gpu_check --data $D --json $L/$name.json \
    --fit-args "--featvis.sheets null $args" > $L/$name.log 2>&1 &
done <<< "${SWEEP:-}"
wait
grep -h "^Time to accuracy" $L/*.log
