"""Verifier-guided selection and search with a process reward model (PRM), under a FLOPs budget.

A scorer maps PRM rows to step scores: (rows, ends) -> per row, the score in [0, 1] read at each
of its `ends` (reasonax.model.prm.score_steps; `prm_scorer` builds one from a PRM, tests use
hand-built ones). A PRM scores step i as the probability that steps 1..i are correct. A
solution's steps are the pieces of its text between separators (blank pieces dropped, each
stripped); the PRM's row is its prompt then each step and the separator, tokenized apart and
joined by prm.join_steps (as the PRM is trained).

Selection among N sampled solutions of one question (pure):

    aggregate(scores, how)    last: s_K; min: min_i s_i; product: prod_i s_i (no steps: 0)
    best_of_n                 argmax_j aggregate(scores_j)           (ties: the first)
    weighted_vote             argmax_a sum_{j: answer_j = a} aggregate(scores_j)
                              (answers grouped as maj@k groups them; None abstains)

Step-level beam search (Snell et al. 2024, arXiv 2408.03314; HF search-and-learn), `beam_search`:
W beams per question; each step is one engine call in which every live beam is a prompt
(question prompt + its tokens so far) with M samples that end at the separator (a stop string),
so W·M children per question (the first step: W copies of the root with distinct keys). Every
child is scored by the PRM over its whole prefix (the rescoring of growing prefixes is counted).
A child finishes at EOS, a format stop string, a stated answer (`states_answer` on its last
step), the token cap, or after max_steps engine calls; finished children join the candidate
pool, the unfinished ones (duplicates dropped) are pruned to the W best by aggregated score. The
pick is the pool's best by aggregated score. The growing prefixes are served by the engine's
prefix cache (whole blocks) at one params version.

FLOPs are counted from realised tokens: the policy per engine call with
budget.generation_flops (each prompt prefilled once, less its tokens read from the prefix cache,
each sample's kept tokens), the PRM with flops.score_flops over each scored row. `plan_matched`
chooses N (majority, best-of-N, weighted) and W (beam) so the methods' predicted FLOPs meet;
`match_n` then picks N from the realised costs of the samples drawn.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence

from reasonax.eval import grader, metrics
from reasonax.eval.step_labels import split_steps  # the labels' split: the PRM scores steps as it was trained on them
from reasonax.model import flops as flops_lib
from reasonax.model import prm
from reasonax.model.config import ModelConfig
from reasonax.sample import budget
from reasonax.sample.engine import PrefixCache, generate
from reasonax.sample.sampler import GenerateResult, SamplingParams
from reasonax.sample.stops import StopStrings, cut_at_stop

AGGREGATIONS = ("last", "min", "product")
SELECTIONS = ("majority", "prm-best-of-n", "prm-weighted", "beam")


# ----------------------------------------------------------------------------------------------
# Scorers


@dataclasses.dataclass
class Scorer:
    """A step scorer: `fn(rows, ends)` -> per row, a score in [0, 1] at each of its ends. `cfg`:
    the PRM's ModelConfig, for its FLOPs (None: a hand-built scorer, counted as 0)."""

    fn: Callable[[list[list[int]], list[list[int]]], list[list[float]]]
    cfg: ModelConfig | None = None

    def __call__(self, rows: list[list[int]], ends: list[list[int]]) -> list[list[float]]:
        if not rows:
            return []
        out = [list(map(float, s)) for s in self.fn(rows, ends)]
        if len(out) != len(rows) or any(len(s) != len(e) for s, e in zip(out, ends)):
            raise ValueError(f"the scorer gave {[len(s) for s in out]} scores for rows with {[len(e) for e in ends]} "
                             "steps")
        bad = [x for s in out for x in s if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"step scores must be in [0, 1], got {bad[:3]}")
        return out

    def flops(self, rows: Sequence[Sequence[int]]) -> dict:
        return prm_flops(self.cfg, [len(r) for r in rows]) if self.cfg is not None else _zero()


def prm_scorer(params, cfg: ModelConfig, *, batch_size: int = 8) -> Scorer:
    """A Scorer backed by a PRM (reasonax.model.prm: params with "prm_head"), through
    prm.score_steps (looked up when called)."""

    def fn(rows, ends):
        return prm.score_steps(params, cfg, rows, ends, batch_size=batch_size)

    return Scorer(fn, cfg)


def constant_scorer(value: float = 0.5) -> Scorer:
    """Every step scores `value` (a baseline; with it beam search keeps its first children)."""
    return Scorer(lambda rows, ends: [[value] * len(e) for e in ends])


# ----------------------------------------------------------------------------------------------
# Steps and PRM rows (pure)


def prm_row(encode: Callable[[str], list[int]], prompt_ids: Sequence[int], steps: Sequence[str],
            separator: str) -> tuple[list[int], list[int]]:
    """(ids, ends) of a solution for the PRM: each step and the separator tokenized apart."""
    return prm.join_steps(prompt_ids, [encode(s) for s in steps], encode(separator))


def tokenizer_encode(tokenizer) -> Callable[[str], list[int]]:
    """text -> ids without special tokens (an HF tokenizer or one with that encode)."""
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


def score_texts(scorer: Scorer, encode, prompt_ids: Sequence[int], texts: Sequence[str], separator: str
                ) -> tuple[list[list[float]], list[dict]]:
    """Step scores of solutions to one question and, per solution, the PRM FLOPs of scoring it (a
    solution without a step is not scored: no scores, no FLOPs)."""
    steps = [split_steps(t, separator) for t in texts]
    todo = [i for i, s in enumerate(steps) if s]
    rows = [prm_row(encode, prompt_ids, steps[i], separator) for i in todo]
    got = scorer([r for r, _ in rows], [e for _, e in rows])
    out: list[list[float]] = [[] for _ in texts]
    cost = [_zero() for _ in texts]
    for i, s, (r, _) in zip(todo, got, rows):
        out[i], cost[i] = s, scorer.flops([r])
    return out, cost


# ----------------------------------------------------------------------------------------------
# Selection (pure)


def aggregate(scores: Sequence[float], how: str) -> float:
    """A solution's score from its step scores: last, min or product (no steps: 0).

    >>> aggregate([0.9, 0.5, 0.8], "last"), aggregate([0.9, 0.5, 0.8], "min")
    (0.8, 0.5)
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation {how!r}; expected one of {AGGREGATIONS}")
    if not scores:
        return 0.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    return float(math.prod(scores))


def best_of_n(scores: Sequence[Sequence[float]], how: str) -> int | None:
    """Index of the solution with the highest aggregated score (ties: the first; none: None)."""
    if not scores:
        return None
    agg = [aggregate(s, how) for s in scores]
    return max(range(len(agg)), key=lambda j: (agg[j], -j))


def weighted_vote(answers: Sequence[str | None], scores: Sequence[Sequence[float]], how: str, *,
                  key: Callable[[str], object] | None = None, same: Callable[[str, str], bool] | None = None
                  ) -> str | None:
    """PRM-weighted majority vote: the answer whose solutions' aggregated scores sum highest.
    Answers are grouped by metrics.group_answers, as majority votes are (`same`, else `key`, default
    grader.answer_key); None answers abstain; ties go to the answer seen first."""
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers but {len(scores)} score lists")
    reps, groups = metrics.group_answers(answers, key=key, same=same)
    if not reps:
        return None
    weight = [sum(aggregate(scores[i], how) for i in g) for g in groups]
    return reps[max(range(len(reps)), key=lambda g: (weight[g], -g))]


def states_answer(step: str) -> bool:
    """Whether a step states a final answer: a \\boxed{}, a #### line or an answer phrase ("the
    answer is 5"); a sentence that merely states a value ("the total is 12.") does not end a beam."""
    if grader.boxed_answer(step):
        return True
    low = step.lower()
    return ("####" in step or "answer" in low) and grader.extract_answer(step, fallback=False) is not None


# ----------------------------------------------------------------------------------------------
# FLOPs (pure)


def _zero() -> dict:
    return {"dense": 0, "attention": 0, "total": 0}


def prm_flops(cfg: ModelConfig, row_lengths: Sequence[int]) -> dict:
    """FLOPs of a PRM scoring rows of these lengths (one forward each, padding not counted)."""
    total = Counter(_zero())
    for n in row_lengths:
        total.update(flops_lib.score_flops(cfg, 1, n))
    return dict(total)


def policy_flops(cfg: ModelConfig, prompt_lengths: Sequence[int], cached_lengths: Sequence[int],
                 prompt_index: Sequence[int], lengths: Sequence[int]) -> dict:
    """FLOPs of one engine call: each distinct prompt prefilled once less its `cached` tokens (read
    from the prefix cache), each row's kept generated tokens attending to its prompt."""
    cached = list(cached_lengths) or [0] * len(prompt_lengths)
    total = Counter(_zero())
    for p, c in zip(prompt_lengths, cached):
        total.update(budget.generation_flops(cfg, p, 0, cached=c))
    for i, g in zip(prompt_index, lengths):
        total.update(budget.generation_flops(cfg, prompt_lengths[i], g, prefill=False))
    return dict(total)


def result_flops(cfg: ModelConfig, res: GenerateResult) -> dict:
    """policy_flops of an engine call's result."""
    return policy_flops(cfg, res.prompt_lengths, res.cached_lengths, res.prompt_index, res.lengths)


# ----------------------------------------------------------------------------------------------
# Compute-matched planning (pure)


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Mean token counts from a calibration run."""

    prompt: float  # policy prompt tokens per question
    prm_prompt: float  # PRM prompt tokens per question
    solution: float  # generated tokens per solution
    step: float  # generated tokens per step

    @property
    def steps(self) -> int:
        return max(1, math.ceil(self.solution / max(self.step, 1e-9)))


def sample_cost(n: int, lengths: Lengths, policy_per_token: float, prm_per_token: float, scored: bool) -> float:
    """Predicted FLOPs per question of n independent samples: the prompt prefilled once, n
    solutions, and (scored) the PRM over each solution's row."""
    cost = policy_per_token * (lengths.prompt + n * lengths.solution)
    if scored:
        cost += prm_per_token * n * (lengths.prm_prompt + lengths.solution)
    return cost


def beam_cost(width: int, expansions: int, lengths: Lengths, policy_per_token: float, prm_per_token: float,
              cache_hit: float = 0.0) -> float:
    """Predicted FLOPs per question of beam search run for lengths.steps steps K, no beam ending
    early: at step t (1..K) W prompts of prompt + (t-1)·step tokens are prefilled (a share
    cache_hit read from the prefix cache), W·M children of `step` tokens are drawn, and the PRM
    rescores the W·M rows of prm_prompt + t·step tokens."""
    W, M, s = width, expansions, lengths.step
    policy = prm_ = 0.0
    for t in range(1, lengths.steps + 1):
        policy += W * (1 - cache_hit) * (lengths.prompt + (t - 1) * s) + W * M * s
        prm_ += W * M * (lengths.prm_prompt + t * s)
    return policy_per_token * policy + prm_per_token * prm_


def beam_shape(level: int, width: int, expansions: int) -> tuple[int, int]:
    """(W, M) of beam search at budget level k: (k, expansions), or with a fixed width > 0 (width, k)."""
    return (width, level) if width > 0 else (level, expansions)


def plan_matched(levels: Sequence[int], methods: Sequence[str], lengths: Lengths, policy_per_token: float,
                 prm_per_token: float, expansions: int, cache_hit: float = 0.0,
                 budgets: Sequence[float] | None = None, width: int = 0) -> list[dict]:
    """Per budget level k, each method's knob and predicted FLOPs per question, matched.

    The level's budget B_k is that of the anchor: beam search with W = k beams of M = expansions
    (width > 0: W = width beams of M = k) when beam is among the methods, else majority vote over
    k samples, else best-of-N over k; `budgets` (one per level), when given, replaces it (the anchor's realised FLOPs, measured).
    The sample methods take the N >= 1 whose predicted cost is nearest B_k (N = round((B_k -
    prefill) / per-sample cost)). Returns [{"level": k, "budget": B_k, method: {"n" | "width",
    "expansions", "predicted"}}].
    """
    unknown = set(methods) - set(SELECTIONS)
    if unknown:
        raise ValueError(f"unknown selection methods {sorted(unknown)}; expected {SELECTIONS}")
    out = []
    if budgets is not None and len(budgets) != len(levels):
        raise ValueError(f"{len(budgets)} budgets for {len(levels)} levels")
    for i, k in enumerate(levels):
        W, M = beam_shape(k, width, expansions)
        if budgets is not None:
            B = float(budgets[i])
        elif "beam" in methods:
            B = beam_cost(W, M, lengths, policy_per_token, prm_per_token, cache_hit)
        else:
            B = sample_cost(k, lengths, policy_per_token, prm_per_token, scored="majority" not in methods)
        row: dict = {"level": k, "budget": B}
        for m in methods:
            if m == "beam":
                row[m] = {"width": W, "expansions": M,
                          "predicted": beam_cost(W, M, lengths, policy_per_token, prm_per_token, cache_hit)}
                continue
            scored = m != "majority"
            fixed = sample_cost(0, lengths, policy_per_token, prm_per_token, scored)
            per = sample_cost(1, lengths, policy_per_token, prm_per_token, scored) - fixed
            n = max(1, round((B - fixed) / per))
            row[m] = {"n": n, "predicted": sample_cost(n, lengths, policy_per_token, prm_per_token, scored)}
        out.append(row)
    return out


def realised_cost(fixed: Sequence[float], per_row: Sequence[Sequence[float]], n: int) -> float:
    """Mean over questions of fixed[q] + the first n of per_row[q] (FLOPs of N samples)."""
    return sum(f + sum(r[:n]) for f, r in zip(fixed, per_row)) / max(1, len(fixed))


def match_n(fixed: Sequence[float], per_row: Sequence[Sequence[float]], budget: float) -> int:
    """The N (1 <= N <= the samples drawn per question) whose realised cost is nearest the budget
    (ties: the smaller N).

    >>> match_n([1.0, 1.0], [[2.0, 2.0, 2.0], [4.0, 4.0, 4.0]], 7.5)  # costs 4, 7, 10
    2
    """
    drawn = min((len(r) for r in per_row), default=0)
    if drawn < 1:
        raise ValueError("match_n needs at least one sample per question")
    return min(range(1, drawn + 1), key=lambda n: (abs(realised_cost(fixed, per_row, n) - budget), n))


# ----------------------------------------------------------------------------------------------
# Beam search (drives the engine)


@dataclasses.dataclass
class Candidate:
    """A partial or finished solution of one question."""

    tokens: list[int]  # generated tokens (prompt excluded)
    text: str  # decoded, cut before a format stop string
    scores: list[float]  # the PRM's step scores over the whole prefix
    calls: int  # engine calls (steps) that produced it
    finish: str | None = None  # eos | stop | answer | length | max_steps; None while live


@dataclasses.dataclass
class SearchResult:
    """One question's beam search: the candidate pool, the pick and the FLOPs spent on it."""

    candidates: list[Candidate]
    best: int | None  # index into candidates
    policy_flops: dict
    prm_flops: dict

    @property
    def text(self) -> str:
        return self.candidates[self.best].text if self.best is not None else ""

    @property
    def flops(self) -> float:
        return self.policy_flops["total"] + self.prm_flops["total"]


def _finish(c: Candidate, eos: frozenset, stopped: bool, separator: str, max_tokens: int, max_steps: int,
            answer_fn: Callable[[str], bool]) -> str | None:
    """Why a child ends (None: it goes on); stopped: its text reached a format stop string."""
    if c.tokens and c.tokens[-1] in eos:
        return "eos"
    if stopped:
        return "stop"
    steps = split_steps(c.text, separator)
    if steps and answer_fn(steps[-1]):
        return "answer"
    if len(c.tokens) >= max_tokens:
        return "length"
    if c.calls >= max_steps:
        return "max_steps"
    return None


def beam_search(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                scorer: Scorer, tokenizer, *, prm_prompts: Sequence[Sequence[int]], width: int, expansions: int,
                max_steps: int, separator: str = "\n", aggregation: str = "last", step_tokens: int = 0,
                eos_ids: Sequence[int] | None = None, stops: Sequence[str] = (), seed: int = 0,
                key_ids: Sequence[int] | None = None, prefix_cache: PrefixCache | None = None,
                params_version: int = 0, answer_fn: Callable[[str], bool] = states_answer,
                prm_tokenizer=None, **engine_kw) -> list[SearchResult]:
    """Step-level beam search over every question at once (see the module docstring).

    prompts: the policy's prompt ids per question; prm_prompts: the PRM's (the question as the PRM
    was trained on it). sampling.max_new_tokens caps a whole solution, step_tokens (0: no cap) one
    step; sampling.n is ignored (the search draws `expansions` per beam). stops: the format's stop
    strings, which end a solution. tokenizer: decode(ids, skip_special_tokens=True) for the step
    text; prm_tokenizer (default: tokenizer) encode(text, add_special_tokens=False) for the PRM
    rows. engine_kw go to generate
    (num_slots, kv_budget_bytes, block_steps).
    """
    if width < 1 or expansions < 1 or max_steps < 1:
        raise ValueError(f"beam search needs width, expansions and max_steps >= 1, got {width}, {expansions}, "
                         f"{max_steps}")
    if len(prm_prompts) != len(prompts):
        raise ValueError(f"{len(prm_prompts)} PRM prompts for {len(prompts)} questions")
    aggregate([], aggregation)  # names a bad aggregation before any work
    eos = frozenset(cfg.eos_token_ids if eos_ids is None else eos_ids)
    encode = tokenizer_encode(prm_tokenizer if prm_tokenizer is not None else tokenizer)
    stop = StopStrings(tokenizer, (separator, *stops), tuple(eos))
    key_ids = list(range(len(prompts))) if key_ids is None else list(key_ids)
    live = [[Candidate([], "", [], 0) for _ in range(width)] for _ in prompts]
    pool: list[list[Candidate]] = [[] for _ in prompts]
    pol = [Counter(_zero()) for _ in prompts]
    scr = [Counter(_zero()) for _ in prompts]
    for call in range(max_steps):
        req = [(q, b) for q in range(len(prompts)) for b in range(len(live[q]))]
        if not req:
            break
        room = max(sampling.max_new_tokens - len(live[q][b].tokens) for q, b in req)
        cap = min(room, step_tokens) if step_tokens else room
        sp = dataclasses.replace(sampling, n=expansions, max_new_tokens=cap)
        # a beam's key: (question, call, beam), so no two engine rows share their randomness
        keys = [(key_ids[q] * max_steps + call) * width + b for q, b in req]
        res = generate(params, cfg, [list(prompts[q]) + live[q][b].tokens for q, b in req], sp, eos_ids=tuple(eos),
                       seed=seed, key_ids=keys, stop=stop, prefix_cache=prefix_cache,
                       params_version=params_version if prefix_cache is not None else None, **engine_kw)
        # realised policy FLOPs, per question
        for i, (q, _) in enumerate(req):
            pol[q].update(budget.generation_flops(cfg, res.prompt_lengths[i], 0, cached=res.cached_lengths[i]))
        children: list[list[tuple[Candidate, bool]]] = [[] for _ in prompts]  # (child, reached a stop string)
        for r, toks in enumerate(res.tokens):
            q, b = req[res.prompt_index[r]]
            parent = live[q][b]
            pol[q].update(budget.generation_flops(cfg, len(prompts[q]) + len(parent.tokens), len(toks),
                                                  prefill=False))  # all it drew, past its own cap too
            toks = toks[:sampling.max_new_tokens - len(parent.tokens)]
            tokens = parent.tokens + list(toks)
            text, stopped = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)
            children[q].append((Candidate(tokens, text, [], parent.calls + 1), stopped))
        for q, kids in enumerate(children):
            if not kids:
                continue
            scores, cost = score_texts(scorer, encode, prm_prompts[q], [c.text for c, _ in kids], separator)
            for f in cost:
                scr[q].update(f)
            going, seen = [], set()
            for (c, stopped), s in zip(kids, scores):
                c.scores = s
                c.finish = _finish(c, eos, stopped, separator, sampling.max_new_tokens, max_steps, answer_fn)
                if c.finish is not None:
                    pool[q].append(c)
                elif tuple(c.tokens) not in seen:
                    seen.add(tuple(c.tokens))
                    going.append(c)
            order = sorted(range(len(going)), key=lambda j: (-aggregate(going[j].scores, aggregation), j))
            live[q] = [going[j] for j in order[:width]]
    out = []
    for q in range(len(prompts)):
        cands = pool[q] + live[q]
        best = best_of_n([c.scores for c in cands], aggregation)
        out.append(SearchResult(cands, best, dict(pol[q]), dict(scr[q])))
    return out
