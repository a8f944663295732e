"""Balanced steps: the shuffled micro-batches of an epoch evened out in tokens.

Under CUDA graphs every micro-batch is padded to the longest of the run, so an unbalanced one pays for
its pad tokens in every layer. Swapping rows between micro-batches (every row still once an epoch, every
step still its rows) brings the longest down towards the mean. It changes which rows share a step, not how
many, nor the schedule.
"""

from __future__ import annotations

from typing import Sequence


def balance_micro_batches(order: Sequence[int], lengths: Sequence[int], size: int) -> list[int]:
    """`order` with rows swapped between its micro-batches (`size` consecutive rows each) until the
    longest holds as few tokens as swapping one pair of rows at a time can make it.

    Each swap takes the longest micro-batch and the one whose exchange of a row leaves the longer of the
    two shortest; both end shorter than it was, so the sum of squared token counts falls and the loop
    ends. Every row stays in the epoch once and every micro-batch (so every step) keeps its size; a
    trailing micro-batch shorter than `size` is not touched."""
    order = list(order)
    count = len(order) // size
    batches = [order[i * size : (i + 1) * size] for i in range(count)]
    tokens = [sum(lengths[r] for r in batch) for batch in batches]
    floor = -(-sum(tokens) // max(count, 1))  # no micro-batch can be shorter than this and all be equal

    def by_length(batch: list[int]) -> dict[int, int]:  # one position per distinct row length: fewer pairs to try
        return {lengths[r]: i for i, r in reversed(list(enumerate(batch)))}

    positions = [by_length(batch) for batch in batches]
    while count > 1:
        longest = max(range(count), key=tokens.__getitem__)  # the first of equals: deterministic
        if tokens[longest] <= floor:
            break
        best = None  # (the pair's longer count after the swap, other micro-batch, length out, length in)
        for other in sorted(range(count), key=tokens.__getitem__):  # shortest first
            if best is not None and tokens[longest] + tokens[other] >= 2 * best[0]:
                break  # no swap with this one or any longer one can leave the pair shorter than `best`
            room = tokens[longest] - tokens[other]
            for out_length in positions[longest]:
                for in_length in positions[other]:
                    if 0 < out_length - in_length < room:
                        after = max(tokens[longest] - out_length + in_length, tokens[other] + out_length - in_length)
                        if best is None or after < best[0]:
                            best = (after, other, out_length, in_length)
        if best is None:
            break
        _, other, out_length, in_length = best
        i, j = positions[longest][out_length], positions[other][in_length]
        batches[longest][i], batches[other][j] = batches[other][j], batches[longest][i]
        tokens[longest] -= out_length - in_length
        tokens[other] += out_length - in_length
        positions[longest], positions[other] = by_length(batches[longest]), by_length(batches[other])
    return [r for batch in batches for r in batch] + order[count * size :]
