#!/bin/bash
# Nsight Compute of the sm90 forward on the window case and its references (session 6 of
# sm90_notes.md): the driver's default bf16 hdim-128 variant, one launch each of window_1024,
# keys_1152 (9 unmasked key blocks per tile) and dense; exports the SASS source page (warp-state
# samples per instruction) and the details page as CSV into $OUT/ncu_window.tgz.
# On the device, with out/sm90 carried (tests/cuda/sm90_build.sh):
#   run(command="bash tests/cuda/sm90_ncu_window.sh", carry=["out/sm90"])
set -e
OUT=${OUT:-/tmp/o}; mkdir -p "$OUT"
B=out/sm90/sm90_fwd_check; chmod +x $B
for c in window_1024 keys_1152 dense; do
  SM90_PROFILE_CASE=$c timeout 200 ncu --clock-control none -k regex:fwd_kernel --launch-skip 1 \
    --launch-count 1 --set full --import-source no -o "$OUT/$c" -f $B maskbench \
    "bf16 h128 128x128 s2 pp q2 so" 2>&1 | tail -1
  ncu --import "$OUT/$c.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$c.csv"
  ncu --import "$OUT/$c.ncu-rep" --page details --csv > "$OUT/details_$c.csv"
done
cd "$OUT" && tar -czf ncu_window.tgz sass_*.csv details_*.csv && rm -f ./*.csv ./*.ncu-rep
