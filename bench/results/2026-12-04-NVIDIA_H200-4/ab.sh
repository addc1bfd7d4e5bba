#!/usr/bin/env bash
# side by side on the GPU: 249478f (.whl/old) against the working tree, interleaved
. bench/gpu_env.sh python3 > /dev/null 2>&1
NEW=$PWD; OLD=$PWD/.whl/old
run() {  # tree label args...
  local tree=$1 label=$2; shift 2
  ( cd "$tree" && PYTHONPATH="$tree:$PYTHONPATH" timeout 60 python3 -m gpubraid train "$@" --val-every 0 --no-progress 2>&1 ) \
    | awk -v l="$label" '/wall time/ {print l, $3}'
}
MN=(mnist --n-train 1000 --n-val 500 --iterations 20)
for t in $OLD $NEW; do run $t warm "${MN[@]}" --iterations 2; done
for r in 1 2 3; do
  for t in old new; do
    tree=$NEW; [ $t = old ] && tree=$OLD
    run $tree "$t mnist-serial" "${MN[@]}" --method serial
    run $tree "$t mnist-oneshot" "${MN[@]}" --method oneshot
    run $tree "$t paper256-oneshot" peaks --layers 256 --final-time 1 --activation smoothrelu --method oneshot --iterations 40
  done
done
