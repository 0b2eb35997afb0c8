#!/usr/bin/env bash
# The whole Fleming-R1 recipe at toy scale on a CPU, every stage through the real scripts and their --tiny presets:
#   kg.py -> synth.py -> filter.py (RL pool + cold-start subset) -> distill.py (KG teacher, on the subset) -> tiny.py
#   base (tokenizer, model, pretraining corpus) -> sft.py (pretrain Base) -> tiny.py probe -> per seed: sft.py (CoT
#   cold start) -> grpo.py --stage 1 -> mine.py -> grpo.py --stage 2 -> eval.py of every model on the held-out test
#   set -> tiny.py report (the ablation table) -> report.py (the audit page).
# Usage: bash run_tiny.sh            (RUN=runs/tiny SEEDS="0 1 2" by default; SMOKE=1 for the CI-sized run;
#        CONTROLS=1 adds the controls (docs/tiny_runs.md#controls): per seed the cold start trained on for RL stage
#        1's time, and on the first seed RL stage 1 with shuffled rewards)
# Re-running skips every stage whose output exists; the training stages resume from their last checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
export TRITON_INTERPRET=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
# glibc keeps freed buffers (logits, KV caches, activations) instead of unmapping and re-faulting them every step:
# the same results bit for bit, faster (docs/old_design.md#speed)
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
if [ -z "${NO_INSTALL:-}" ]; then
  python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
  pip install -q -r requirements.txt
fi
RUN=${RUN:-runs/tiny}
SEEDS=${SEEDS:-"0 1 2"}
TORCHRUN="torchrun --standalone --nproc_per_node 2"
EVAL="env OMP_NUM_THREADS=2 python eval.py"  # one process alone: both cores (the same predictions as one thread)
# every size of the tiny run is in the stages' TINY presets (--tiny) and tiny.py's defaults; SMOKE=1 makes them a
# few steps each: it checks the plumbing and every artifact, not the numbers (an untrained model never stops early)
SYNTH=""; FILTER=""; BASE=""; PRE=""; SFT=""; RL=""; MINE=""; TOK=""
MATCH="--steps 1870"  # the matched-compute control: RL stage 1's wall-clock in cold-start steps (docs/tiny_runs.md#controls)
if [ -n "${SMOKE:-}" ]; then
  SYNTH="--n 600 --test-n 100 --val-n 40"; FILTER="--cold-start 0.3"; BASE="--drills 2000 --passes 2"
  PRE="--steps 4"; SFT="--steps 4"; MATCH="--steps 2"
  TOK="--max-new-tokens 32"; RL="--max-steps 2 --prompts 4 $TOK"; MINE="--samples 2 --sample 60 $TOK"
  SEEDS=${SEEDS_SMOKE:-"0"}
fi
mkdir -p "$RUN"
t0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - t0 ))s] $*"; }

stage "kg.py: sample dump -> knowledge graph"
[ -f "$RUN/kg/stats.json" ] || python kg.py --dump data/sample_wiki.xml --out "$RUN/kg"

stage "synth.py: KG -> multiple-choice questions (train, held-out val + test)"
[ -f "$RUN/synth/val.jsonl" ] || python synth.py --tiny --kg "$RUN/kg" --out "$RUN/synth" $SYNTH

stage "filter.py: format filter, dedup, difficulty (heuristic: hops + rarity), mixing"
[ -f "$RUN/pool/train.jsonl" ] || python filter.py --tiny --synthetic "$RUN/synth/train.jsonl" --out "$RUN/pool" $FILTER
POOL="$RUN/pool/train.jsonl"; VAL="$RUN/synth/val.jsonl"; TEST="$RUN/synth/test.jsonl"  # val: checkpoint choice only

stage "distill.py: CoT cold-start data from the KG teacher, on the cold-start subset"
python distill.py --data "$RUN/pool/cold_start.jsonl" --teacher kg --kg "$RUN/kg" --out "$RUN/sft.jsonl" --tiny

stage "tiny.py base + sft.py: tokenizer, random Qwen2-shaped model, pretraining = the Base model"
[ -f "$RUN/base_init/pretrain.jsonl" ] || python tiny.py base --kg "$RUN/kg" --pool "$POOL" --out "$RUN/base_init" $BASE
[ -f "$RUN/base/final/config.json" ] || $TORCHRUN sft.py --tiny base --data "$RUN/base_init/pretrain.jsonl" \
  --init "$RUN/base_init/init" --out "$RUN/base" $PRE
[ -f "$RUN/base_probe.json" ] || python tiny.py probe --model "$RUN/base/final" --kg "$RUN/kg" --out "$RUN/base_probe.json"

for s in $SEEDS; do
  S="$RUN/seed$s"
  stage "seed $s: sft.py cold start"
  [ -f "$S/sft/final/config.json" ] || $TORCHRUN sft.py --tiny cold --data "$RUN/sft.jsonl" --init "$RUN/base/final" \
    --out "$S/sft" --seed "$s" $SFT
  stage "seed $s: grpo.py --stage 1 (Easy + Moderate)"
  [ -f "$S/rl1/final/config.json" ] || $TORCHRUN grpo.py --tiny --stage 1 --data "$POOL" --val "$VAL" \
    --init "$S/sft/final" --out "$S/rl1" --seed "$s" $RL
  stage "seed $s: mine.py hard pool with the stage-1 model"
  [ -f "$S/mine/hard_pool.jsonl" ] || $TORCHRUN mine.py --tiny --model "$S/rl1/best" --data "$POOL" \
    --out "$S/mine" --seed "$s" $MINE
  stage "seed $s: grpo.py --stage 2 (hard pool, larger k)"
  [ -f "$S/rl2/final/config.json" ] || $TORCHRUN grpo.py --tiny --stage 2 --data "$POOL" --pool "$S/mine/hard_pool.jsonl" \
    --val "$VAL" --init "$S/rl1/best" --out "$S/rl2" --seed "$s" $RL
  if [ -n "${CONTROLS:-}" ]; then
    stage "seed $s: control: the cold start trained on for RL stage 1's time"
    [ -f "$S/sft_more/final/config.json" ] || $TORCHRUN sft.py --tiny cold --data "$RUN/sft.jsonl" \
      --init "$S/sft/final" --out "$S/sft_more" --seed "$s" $MATCH
    if [ "$s" = "${SEEDS%% *}" ]; then
      stage "seed $s: control: RL stage 1 with shuffled rewards"
      [ -f "$S/rl1_shuffled/final/config.json" ] || $TORCHRUN grpo.py --tiny --stage 1 --shuffle-rewards \
        --data "$POOL" --val "$VAL" --init "$S/sft/final" --out "$S/rl1_shuffled" --seed "$s" $RL
    fi
  fi
done

stage "eval.py: every model on the held-out test set (one Base for all seeds: it precedes the recipe)"
models=(); outs=()  # one process for all of them: a process start costs ~3 s
add() { [ -f "$2/results.json" ] || { models+=("$1"); outs+=("$2"); }; }
add "$RUN/base/final" "$RUN/eval_base"
for s in $SEEDS; do  # RL: the checkpoint selected on the validation split
  add "$RUN/seed$s/sft/final" "$RUN/seed$s/eval/sft"
  add "$RUN/seed$s/rl1/best" "$RUN/seed$s/eval/rl1"
  add "$RUN/seed$s/rl2/best" "$RUN/seed$s/eval/rl2"
  for c in sft_more rl1_shuffled; do  # the controls' last weights: their best/ could be their start
    [ ! -f "$RUN/seed$s/$c/final/config.json" ] || add "$RUN/seed$s/$c/final" "$RUN/seed$s/eval/$c"
  done
done
[ ${#models[@]} = 0 ] || $EVAL --tiny --model "${models[@]}" --bench "jsonl=$TEST" --out "${outs[@]}" $TOK

stage "eval.py plumbing on a few real-format records (shipped sample files)"
[ -f "$RUN/eval_formats/results.json" ] || $EVAL --tiny --model "$RUN/seed${SEEDS%% *}/rl2/best" \
  --bench medqa=data/sample_medqa.jsonl pubmedqa=data/sample_pubmedqa.json --out "$RUN/eval_formats" $TOK

stage "tiny.py report: the ablation table"
python tiny.py report --run "$RUN" --seeds $SEEDS
echo "total $(( $(date +%s) - t0 ))s; every artifact is in $RUN"
python report.py --run "$RUN"  # the audit page: every item, every model's answer, every fact's source
