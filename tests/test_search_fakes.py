"""Scripted models and a plain-Python MCTS written from the reference's rules (no JAX).

Shared by the search tests; holds no tests itself. The plain MCTS follows
rstar_reference.md §2 line by line with node objects (parent, children, counters), as
an independent check of the array implementation in `rstar_jax.search`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import zlib

EOS, EOC, EOA = "<end_of_step>", "<end_of_code>", "<end_of_answer>"
TOO_MANY_CODE_ERRORS = "Too many consecutive steps have code errors."
TOO_MANY_STEPS = "Fail to sove the problem within limited steps."


def load_search_config(preset=None, **overrides):
    """configs/search.py:get_config(preset) with overrides applied."""
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "search.py")
    spec = importlib.util.spec_from_file_location("_search_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config(preset)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def h(*parts) -> int:
    """A stable hash (Python's str hash is salted per process)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


# ------------------------------------------------------------------ scripted models


@dataclasses.dataclass
class Result:
    output: str
    error: bool = False
    timed_out: bool = False


class ScriptedProposer:
    """Proposals are a fixed function of (seed, prompt, sample index), so any batching
    gives the same steps. Small vocabularies make duplicates, answers and errors common."""

    def __init__(self, seed: int, answer_rate: float = 0.04):
        self.seed = seed
        self.answer_rate = answer_rate
        self.calls = []

    def step(self, prompt: str, i: int) -> str:
        r = h(self.seed, prompt, i)
        depth = prompt.count(EOS) + prompt.count(EOC) + prompt.count(EOA)
        u = (r % 1000) / 1000.0
        v = (r // 1000) % 4
        pa = self.answer_rate * (1 + 2 * depth)    # answers get likelier deeper down
        if u < pa:
            tag = EOA if v < 3 else EOS       # a boxed step may stop on <end_of_step> (§9.2)
            return f"So the answer is \\boxed{{{v % 3}}}.{tag}"
        if u < pa + 0.12:
            return f"x = {v}\nraise_error()" + (EOC if v == 0 else EOS)
        if u < pa + 0.22:
            return f"print(x + {v}){EOC}"
        if u < pa + 0.25:
            return f"x = {v}  # no stop tag"
        return f"<code>\nx = x + {v}\n{EOS}" if depth == 0 else f"x = x * {v}\n{EOS}"

    def propose(self, prompts, num_samples, temperature):
        self.calls.append(len(prompts))
        return [[self.step(p, i) for i in range(num_samples)] for p in prompts]


class ScriptedExecutor:
    def __init__(self):
        self.batches = []

    def run(self, programs):
        self.batches.append(len(programs))
        out = []
        for p in programs:
            if "raise_error" in p:
                out.append(Result("NameError: name 'raise_error' is not defined", error=True))
            else:
                out.append(Result(f"{h(p) % 7}"))
        return out


class ScriptedScorer:
    """Dyadic scores k/16 in (-1, 1): sums of a few are exact in float32 and float64."""

    def __init__(self, seed: int):
        self.seed = seed

    def score(self, prompts):
        return [((h("ppm", self.seed, p) % 31) - 15) / 16.0 for p in prompts]


def answer_fn(text: str) -> str:
    s = text.rfind("\\boxed{")
    return text[s + 7: text.index("}", s)] if s >= 0 else text


def grade_fn(pred: str, gold: str) -> bool:
    return pred.strip() == str(gold).strip()


# ------------------------------------------------------------ plain-Python reference


PROMPT = "<|user|>:\n{q}\n<|assistant|>: Let's think step by step and solve the problem with code."


class RefNode:
    def __init__(self, parent=None, tag="0"):
        self.parent, self.children, self.tag = parent, [], tag
        self.depth = 0 if parent is None else parent.depth + 1
        self.text, self.final_answer, self.action_input = "", "", ""
        self.is_code, self.timed_out = False, False
        self.terminal, self.consecutive_errors = False, 0
        self.visits, self.value_sum, self.value, self.inited = 0, 0.0, 0.0, False

    def q(self):
        return self.value_sum / self.visits if self.visits else 0.0

    def update(self, v):
        if not self.inited:
            self.inited, self.value = True, v
        self.visits += 1
        self.value_sum += v

    def update_recursive(self, v):
        n = self
        while n is not None:
            n.update(v)
            n = n.parent

    def uct(self, c, unvisited_inf):
        if self.visits == 0 and unvisited_inf:
            return math.inf
        q = self.q() if self.visits > 0 else 0.0
        if self.parent.visits == 0 or self.visits == 0:
            return q
        return q + c * math.sqrt(math.log(self.parent.visits) / self.visits)


def ref_program(parent: RefNode, step: str) -> str:
    """Replay of the code block so far (§3.4), independently of step_format."""
    hist, n = [], parent
    while n is not None:
        if "<end_of_output>" in n.text or EOC in n.text:
            break
        if n.is_code and n.action_input and not n.timed_out:
            hist.append(n.action_input)
        n = n.parent
    text = ("".join(reversed(hist)) + step).replace(EOS, "")
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if "<code>" in l), None)
    body = lines if start is None else [lines[start].split("<code>", 1)[1]] + lines[start + 1:]
    prog = []
    for l in body:
        if EOC in l:
            prog.append(l.split(EOC, 1)[0])
            break
        prog.append(l)
    return "\n".join(prog).strip("\n")


class RefAgent:
    """One problem, following the reference's MCTS agent rules (§2.2-§2.7)."""

    def __init__(self, question, gold, cfg):
        self.q, self.gold, self.cfg = question, gold, cfg
        self.root = RefNode()
        self.current = None          # the reference's current_nodes[0] (or None)
        self.candidates = []

    def prompt(self, node):
        texts, n = [], node
        while n is not None:
            texts.append(n.text)
            n = n.parent
        return PROMPT.format(q=self.q) + "".join(reversed(texts))

    def select(self, start):
        node = start
        if node.children or node.terminal:
            best, best_v = None, -math.inf
            for ch in node.children:
                if ch.terminal:
                    continue
                v = ch.uct(self.cfg.c_puct, self.cfg.unvisited_score == "inf")
                if v > best_v:
                    best, best_v = ch, v
            if best is None:
                node.terminal = True
            node = best
        return None if node is None or node.terminal else node

    def expand(self, proposals, executor, scorer):
        cfg, node = self.cfg, self.current
        seen, kept = set(), []
        for p in proposals:
            body = p
            for t in (EOS, EOC, EOA):
                if p.endswith(t):
                    body = p[: -len(t)]
                    break
            if body not in seen:
                seen.add(body)
                kept.append(p)
        ans = [p for p in kept if p.endswith(EOA)]
        kept = ans[:1] if ans else kept
        self.candidates = []
        for p in kept:
            ch = RefNode(node, f"{node.tag}.{len(node.children) + 1}")
            if "boxed" in p:
                ch.text, ch.terminal, ch.final_answer = p, True, answer_fn(p)
            else:
                res = executor.run([ref_program(node, p)])[0]
                obs = res.output.strip()
                ch.is_code, ch.action_input, ch.timed_out = True, p, res.timed_out
                ch.text = f"{p}\n<output>{obs}<end_of_output>" if EOC in p else p
                if res.error or res.timed_out or "error" in obs.lower():
                    ch.consecutive_errors = node.consecutive_errors + 1
                    if ch.consecutive_errors >= cfg.errors_threshold:
                        step = p if EOC in p else p + EOC
                        ch.text = f"{step}\n<output>{obs}<end_of_output>"
                        ch.terminal, ch.final_answer = True, TOO_MANY_CODE_ERRORS
            if not ch.terminal and ch.depth > cfg.max_depth:
                ch.terminal, ch.final_answer = True, TOO_MANY_STEPS
            node.children.append(ch)
            if ch.final_answer in (TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS):
                ch.update(cfg.negative_reward)
            elif ch.terminal:
                if cfg.terminal_guided:
                    ch.update_recursive(cfg.positive_reward if grade_fn(ch.final_answer, self.gold)
                                        else cfg.negative_reward)
                else:
                    self.candidates.append(ch)
        if scorer is not None and cfg.ppm_init_children:
            self.candidates += [c for c in node.children
                                if c not in self.candidates and c.visits < 1]
        if scorer is None:
            self.candidates = []

    def backup_candidates(self, scores):
        for c, s in zip(self.candidates, scores):
            if c.terminal and self.cfg.terminal_guided:
                continue
            if c.terminal and c.final_answer:
                c.update_recursive(s)
            else:
                c.update(s)


def ref_search(problems, proposer, executor, cfg, scorer=None):
    """The reference's Solver.solve loop over plain agents; returns (agents, path log)."""
    agents = [RefAgent(p["question"], p.get("answer"), cfg) for p in problems]
    log = []
    for _ in range(cfg.num_rollouts):
        for a in agents:
            a.current = a.select(a.root)
        log.append([a.current.tag if a.current else None for a in agents])
        for _ in range(cfg.max_depth):
            live = [a for a in agents if a.current is not None]
            if not live:
                break
            for a in live:
                if not a.current.children:
                    props = proposer.propose([a.prompt(a.current)], cfg.num_children,
                                             cfg.temperature)[0]
                    a.expand(props, executor, scorer)
                    if a.candidates:
                        a.backup_candidates(scorer.score([a.prompt(c) for c in a.candidates]))
                a.current = a.select(a.current)
            log.append([a.current.tag if a.current else None for a in agents])
    return agents, log


def ref_states(agent):
    """{tag: (visits, q, value, final_answer, text)} in BFS order."""
    out, queue = {}, [agent.root]
    while queue:
        n = queue.pop(0)
        out[n.tag] = (n.visits, n.q(), n.value, n.final_answer, n.text)
        queue += n.children
    return out
