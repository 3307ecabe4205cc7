"""Zero-shot fidelity of a pruned student before and after the least-squares refit, on the real vintagify teacher.

Prunes the teacher 7x by MACs with uniform widths (no search: the refit alone is measured), keeping the channels
that carry the most signal on 32 horse2zebra trainA photos at 128 px (as `prune --refit` does; `--channels weights`:
the largest weights, as before), refits it on those photos and scores it against the teacher on 20 testA photos it
never saw.
Writes bench/results/refit.json; with --results X.jsonl, appends one line there instead (a sweep of --rows and
--ridge, one setting per invocation).

    python bench/refit.py [--threads 2] [--fit-images 32] [--fit-set 0] [--rows N] [--ridge 1e-4] [--multiple-of 1]
                          [--channels activations|weights]
                          [--results bench/results/refit_sweep.jsonl]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from provenance import commit

from ganzip import channels, checkpoint, demo, fidelity, images, prune, refit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "horse2zebra"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=7.0)
    ap.add_argument("--fit-images", type=int, default=32)
    ap.add_argument("--fit-set", type=int, default=0, choices=(0, 1, 2),
                    help="which of three disjoint photo sets, each spread evenly over trainA (the fit set moves the "
                         "score: compare settings over all three)")
    ap.add_argument("--rows", type=int, default=refit.ROWS, help="output pixels sampled per layer's regression")
    ap.add_argument("--ridge", type=float, default=1e-4, help="ridge term, relative to each input's energy")
    ap.add_argument("--multiple-of", type=int, default=None,
                    help="round the uniform widths to this multiple (default: prune's, 16 for vintagify; 1: exact)")
    ap.add_argument("--channels", choices=("activations", "weights"), default="activations",
                    help="which teacher channels the student keeps: most signal on the fit photos, or largest weights")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "refit.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = checkpoint.load_module(demo.vintagify_teacher())
    train, test = sorted((DATA / "trainA").iterdir()), sorted((DATA / "testA").iterdir())
    if args.fit_set and len(train) < 3 * args.fit_images:
        raise SystemExit(f"--fit-set needs 3 x --fit-images photos in trainA, it has {len(train)}")
    shift = args.fit_set * (len(train) // (3 * args.fit_images))
    fit = images.load_batch([train[i * len(train) // args.fit_images + shift] for i in range(args.fit_images)], 128)
    held = images.load_batch([test[i * len(test) // 20] for i in range(20)], 128)
    pruned = prune.prune(teacher, args.ratio, method="uniform", multiple_of=args.multiple_of)
    with torch.inference_mode():
        t_out = teacher(held)
    t0 = time.perf_counter()  # the activations count with the refit: prune --refit measures both
    keep = pruned.keep
    if args.channels == "activations":
        layout = channels.layout_of(teacher)
        ranks = channels.ranking(layout, teacher.state_dict(), channels.input_energy(teacher, fit))
        keep = channels.keep_sets(layout, ranks, layout.widths(pruned.spec))
    student = prune.inherit(teacher, pruned.spec, keep)
    chosen = time.perf_counter() - t0
    with torch.inference_mode():
        before = fidelity.paired(student(held), t_out)
    record = refit.refit(teacher, student, fit, keep=keep, rows=args.rows, ridge=args.ridge)
    record["seconds_with_channels"] = record["seconds"] + chosen
    with torch.inference_mode():
        after = fidelity.paired(student(held), t_out)
    result = {"teacher": "vintagify G_A2B_epoch33", "ratio_macs": args.ratio, "achieved": pruned.achieved,
              "widths": "uniform", "multiple_of": pruned.info["multiple_of"], "spec_widths": student.spec["widths"],
              "commit": commit(),
              "fit": f"{args.fit_images} trainA photos at 128 px", "fit_set": args.fit_set,
              "scored_on": "20 testA photos at 128 px", "channels_by": args.channels,
              "threads": args.threads, "refit": record, "before": before, "after": after}
    if args.results.suffix == ".jsonl":
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")
    else:
        args.results.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
