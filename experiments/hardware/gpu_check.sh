#!/usr/bin/env bash
# The GPU check of issues 16 and 18 (`make gpu-check` runs it with the venv's python; on a machine whose python
# already holds a CUDA torch: `PY=python3 experiments/hardware/gpu_check.sh [STEP ...]`).
#
# Steps (all by default, in this order):
#   runs   the tiny end-to-end run of every model family with `trainer=gpu`; each results.json must say that its
#          stages ran on cuda (provenance.stage_device) and allocated GPU memory (provenance.cuda_peak_mb)
#   bench  the decoding benchmark's quick subset on cuda (`genretr.bench decoding --quick --device cuda`)
#   beam30 issue 18's figure: GENIUS-sized decoder, beam 30, batch 32/128: eager beside the HF baselines at 100K
#          identifiers, then compiled (CUDA graphs; a graph per step, dtype and batch: minutes of compiling) at
#          batch 128
#   default the default experiment at full size on the GPU (what `make run`'s second command trains), timed
#
# Every step runs under a time limit and the script goes on after a failure; it prints one PASS/FAIL line per
# check at the end and exits non-zero if any failed.  Env: PY (python), GPU_CHECK_DIR (outputs, default
# gpu_check/), GPU_CHECK_ARGS (overrides added to every run, e.g. `encoder=scratch` where MiniLM is absent),
# STEP_TIMEOUT (seconds per step, default 300).
#
# On a machine with no package registry whose python has torch, transformers and lightning but not hydra-core,
# omegaconf, antlr4-python3-runtime or faiss-cpu: carry their wheels (requirements.lock's versions), install them
# with `pip install --no-index --no-deps --target /tmp/site WHEELS`, `export PYTHONPATH=/tmp/site:$PWD`, and run
# from the repository root with `GPU_CHECK_ARGS=encoder=scratch` if MiniLM's wheel is absent too.
set -u
PY=${PY:-.venv/bin/python}
DIR=${GPU_CHECK_DIR:-gpu_check}
EXTRA=${GPU_CHECK_ARGS:-}
LIMIT=${STEP_TIMEOUT:-300}
STEPS=${*:-runs bench beam30 default}
RUNS=("method=embedding" "identifier=string" "identifier=genius decoding.rerank=true" "experiment=cart_base"
      "identifier=structured backbone=qwen25vl" "identifier=ssid backbone=llava" "identifier=atomic backbone=idefics")
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1
# a fresh artifact cache: a run whose stages all came from an earlier check's cache allocates nothing on the GPU
GENRETR_CACHE=$(mktemp -d)
export GENRETR_CACHE
summary=()
failed=0

check() {  # name rc: record a PASS/FAIL line
  if [ "$2" -eq 0 ]; then summary+=("PASS $1"); else summary+=("FAIL $1 (rc $2)"); failed=1; fi
}

timed() {  # name cmd...: run under the step limit, print its wall time
  local name=$1 t0=$SECONDS rc; shift
  echo "== $name: $*"
  timeout "$LIMIT" "$@"; rc=$?
  echo "== $name: rc $rc, $((SECONDS - t0)) s"
  return $rc
}

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device \
(no GPU, or the CPU build of torch: install a CUDA build, e.g. pip install torch --index-url \
https://download.pytorch.org/whl/cu128)')" || exit 1
"$PY" -c "import hydra, omegaconf, faiss, sklearn, scipy, PIL, rich, matplotlib, filelock, tokenizers" || exit 1
"$PY" -c "import torch, transformers, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name(0), '| transformers', transformers.__version__, '| lightning', lightning.__version__)"

for step in $STEPS; do
  case $step in
    runs)
      for run in "${RUNS[@]}"; do
        out="$DIR/$(echo "$run" | tr ' =' '_-')"
        # shellcheck disable=SC2086  # a run's overrides are words
        timed "$run" "$PY" -m genretr.run debug=tiny trainer=gpu $run $EXTRA hydra.run.dir="$out"
        rc=$?
        if [ $rc -eq 0 ]; then
          "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); p = r['provenance']
print('   device', p['stage_device'], '| cuda peak', p['cuda_peak_mb'], 'MB | stages (s)', p['stage_seconds'])
print('   precision', p['precision'], '| metrics', json.dumps(r['metrics'])[:300])
sys.exit(0 if str(p['stage_device']).startswith('cuda') and (p['cuda_peak_mb'] or 0) > 0 else 'not on cuda')" \
            "$out/results.json"; rc=$?
        fi
        check "run $run" $rc
      done ;;
    bench)
      timed "bench quick" "$PY" -m genretr.bench decoding --quick --device cuda --out "$DIR/bench_quick"
      check "bench decoding --quick --device cuda" $? ;;
    beam30)
      # eager with the HF baselines (32 queries), then compiled (CUDA graphs) without them, under twice the limit
      timed "bench beam30" "$PY" -m genretr.bench decoding --device cuda --shapes genius --corpus 100000 \
        --batches 32,128 --beams 30 --hf-queries 32 --skip constraint,faiss,bytes --out "$DIR/bench_beam30"
      check "bench genius beam 30 eager" $?
      LIMIT=$((2 * LIMIT)) timed "bench beam30 compiled" "$PY" -m genretr.bench decoding --device cuda --shapes genius \
        --corpus 100000 --batches 128 --beams 30 --skip constraint,faiss,bytes,hf --compile \
        --out "$DIR/bench_beam30_compiled"
      check "bench genius beam 30 compiled" $? ;;
    default)
      # shellcheck disable=SC2086
      timed "default experiment" "$PY" -m genretr.run trainer=gpu $EXTRA hydra.run.dir="$DIR/default"
      check "default experiment on cuda" $? ;;
    *) echo "gpu-check: unknown step $step (runs, bench, beam30, default)"; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
exit $failed
