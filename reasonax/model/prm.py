"""Process reward model (PRM): the decoder with a one-logit head, read at each step's separator.

Shared by the PRM recipe (reasonax.train.prm) and verifier-guided search (reasonax.sample.search).
"""

from __future__ import annotations

from collections.abc import Sequence


def join_steps(prompt: Sequence[int], steps: Sequence[Sequence[int]], separator: Sequence[int]
               ) -> tuple[list[int], list[int]]:
    """The PRM's input: prompt ids, then each step's ids followed by the separator's ids, each
    tokenized apart (so BPE never merges the separator into a step). Returns (ids, ends): ends[i]
    is the index in ids of the last token of step i's separator, where step i's score is read.

    >>> join_steps([5, 6], [[7], [8, 9]], [0])
    ([5, 6, 7, 0, 8, 9, 0], [3, 6])
    """
    if not separator:
        raise ValueError("the step separator tokenizes to no ids")
    ids, ends = list(prompt), []
    for i, step in enumerate(steps):
        if not step:
            raise ValueError(f"step {i} is empty")
        ids.extend(step)
        ids.extend(separator)
        ends.append(len(ids) - 1)
    return ids, ends
