"""How often a trial trains another shape than the sampler drew: the default space, RandomSampler draws.

Runs against either parametrisation, so the two can be compared from one script:
  python bench/space_clamp.py                      # this tree (space version 2)
  git archive 96dac85 hgsearch | tar -x -C /tmp/v1 && PYTHONPATH=/tmp/v1 python bench/space_clamp.py
Version 1 sampled depth and d_h/d_z, then raised the width to the image size or lowered the depth
when the shape did not fit (a draw counts as clamped when the trained depth differs from the sampled
one, or the trained d_h/d_z from the sampled ratio by more than one unit of d_h). Version 2 samples
positions within the feasible ranges; a draw counts when depth or width differ from what the
positions stand for, or the size is not the largest within the sampled target.
"""

from __future__ import annotations

import argparse

import optuna

from hgsearch.model import space


def clamped(family: str, params: dict[str, float], spec, budget: int, d_in: int, d_out: int) -> bool:
    if not hasattr(space, "decode"):  # version 1
        off_ratio = family == "hourglass" and abs(spec.bottleneck / spec.width - params["ratio"]) > 1 / spec.width
        return spec.depth != params["depth"] or off_ratio
    from hgsearch.model.families import param_count  # version 2 only

    target, depth, width = space.decode(family, params, budget, d_in, d_out, space.SpaceConfig())
    # The largest size within the target: one more unit of bottleneck would exceed it.
    largest = spec.params <= target < param_count(d_in, d_out, width, spec.bottleneck + 1, depth)
    return (spec.depth, spec.width) != (depth, width) or not largest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=3_000_000)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d_in, d_out = 196, 784  # x2 super-resolution on 28x28, the default task
    print(f"space version {getattr(space, 'SPACE_VERSION', 1)}, budget {args.budget:,}, {args.draws} draws")
    for family in ("hourglass", "conventional"):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
        n_clamped = at_floor = 0
        for _ in range(args.draws):
            trial = study.ask()
            spec, _lr = space.sample(trial, family, args.budget, d_in, d_out, space.SpaceConfig(), False)
            n_clamped += clamped(family, trial.params, spec, args.budget, d_in, d_out)
            at_floor += family == "hourglass" and spec.width == space.stream_width(d_in, d_out) + 1
            study.tell(trial, 0.0)
        floor = f", width at the floor d_x+1: {at_floor / args.draws:.1%}" if family == "hourglass" else ""
        print(f"{family}: clamped {n_clamped}/{args.draws} = {n_clamped / args.draws:.1%}{floor}")


if __name__ == "__main__":
    main()
