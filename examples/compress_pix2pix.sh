#!/usr/bin/env bash
# Compress a pix2pix U-Net generator 7x with ganzip, end to end.
#
#   examples/compress_pix2pix.sh TEACHER.pth DATA_DIR [DIRECTION] [OUT_DIR] [STEPS]
#
# TEACHER.pth  a pix2pix generator, e.g. checkpoints/maps_pix2pix/latest_net_G.pth (unet_256)
# DATA_DIR     an aligned folder: train/ and val/ (or test/) holding A|B images side by side
# DIRECTION    AtoB or BtoA, as the teacher was trained (default AtoB)
# OUT_DIR      where everything goes (default: compressed-pix2pix)
# SIZE (env)   training and evaluation size in px (default 256)
# STEPS        distillation steps (default 20000)
#
# No pix2pix checkpoint at hand? `ganzip demo --out DIR` fits a small one on the bundled maps and leaves it
# in DIR/teacher.pth (map -> aerial: DIRECTION BtoA, SIZE=128). `ganzip data-path maps` prints the bundled maps
# folder (train/ and val/, A|B pairs), so the whole walkthrough runs on them:
#
#   ganzip demo --out demo && SIZE=128 examples/compress_pix2pix.sh demo/teacher.pth "$(ganzip data-path maps)" BtoA out 500
set -euo pipefail

TEACHER=${1:?usage: $0 TEACHER.pth DATA_DIR [DIRECTION] [OUT_DIR] [STEPS]}
DATA=${2:?usage: $0 TEACHER.pth DATA_DIR [DIRECTION] [OUT_DIR] [STEPS]}
DIRECTION=${3:-AtoB}
OUT=${4:-compressed-pix2pix}
STEPS=${5:-20000}
SIZE=${SIZE:-256}   # training/evaluation size in px (env var); 256 as in the papers
mkdir -p "$OUT"

ganzip inspect "$TEACHER" --size "$SIZE"

# U-Net skip connections tie each encoder level to its decoder level; ganzip prunes them together.
ganzip prune "$TEACHER" --ratio 7 --size "$SIZE" -o "$OUT/student_init.pth"

# Aligned data: the target half of each training pair is the real image for the discriminator.
ganzip distill "$TEACHER" --student "$OUT/student_init.pth" --data "$DATA" --direction "$DIRECTION" \
    --kd wavelet --steps "$STEPS" --size "$SIZE" --out-dir "$OUT/run" -o "$OUT/student.pth"

ganzip profile "$OUT/student.pth" --teacher "$TEACHER" --onnx --size "$SIZE"

# FID on val/ (or test/): each pair's input half is translated, the other half is the real image.
ganzip fid "$OUT/student.pth" --data "$DATA" --direction "$DIRECTION" --teacher "$TEACHER" --size "$SIZE"

VAL="$DATA/val"; [ -d "$VAL" ] || VAL="$DATA/test"
ganzip spectrum "$TEACHER" "$OUT/student.pth" --data "$VAL" --direction "$DIRECTION" --size "$SIZE" -o "$OUT/spectrum.png"

ganzip translate "$OUT/student.pth" "$VAL" --direction "$DIRECTION" -o "$OUT/translated" --size "$SIZE"
ganzip export "$OUT/student.pth" -o "$OUT/student.onnx" --size "$SIZE"
echo "done: $OUT/student.pth, $OUT/student.onnx, $OUT/translated/, $OUT/spectrum.png"
