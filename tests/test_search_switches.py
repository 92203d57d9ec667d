"""Search switches tested with the real components they switch, and the drivers' inputs.

* `error_substring` with the real sandboxed executor: the executor reports what the
  process did; the reference's "error" substring rule is applied in search, behind it.
* `reference_answer_cut` with the real grader's extraction, in every driver (MCTS,
  greedy, sampling, beam): the reference's cut at the first ".\n" (§3.6, quirk 6).
* greedy decoding with a plain dict config (no ConfigDict needed anywhere).
* a node whose prompt no longer fits the policy's context ends as a named terminal and
  the rest of the batch goes on.
"""

import pytest

from rstar_jax import step_format as sf
from rstar_jax.search import beam, mcts, sampling
from rstar_jax.search.settings import MCTSSettings
from rstar_jax.verify.executor import PythonExecutor
from test_search_fakes import EOA, EOC, answer_fn, grade_fn, load_search_config

ERROR_NONE_STEP = "<code>\nprint('Error: none')\n" + EOC
ANSWER_STEP = "\n<answer>The answer is \\boxed{1}." + EOA


class OneStepThenAnswer:
    """The code step first, the answer once an output is visible."""

    def propose(self, prompts, num_samples, temperature):
        return [[ANSWER_STEP] if sf.END_OF_OUTPUT in p else [ERROR_NONE_STEP] for p in prompts]


@pytest.fixture(scope="module")
def executor():
    with PythonExecutor(num_workers=1, timeout_s=10) as ex:
        yield ex


@pytest.mark.parametrize("error_substring", [True, False])
def test_error_substring_switch_with_the_real_executor(executor, error_substring):
    (result,) = executor.run(["print('Error: none')"])
    # The executor reports the process: a clean exit is not an error, whatever it printed.
    assert result.output == "Error: none" and not result.error and not result.timed_out
    cfg = load_search_config("round2", num_rollouts=1, num_children=1, max_depth=4,
                             error_substring=error_substring, initial_num_slots=8)
    (tree,) = mcts.search([{"question": "Q", "answer": "1"}], OneStepThenAnswer(), executor,
                          cfg, answer_fn=answer_fn, grade_fn=grade_fn, progress=False)
    step = tree.nodes[tree.root.children[0]]
    assert step.observation == "Error: none"
    if error_substring:   # the reference's rule: "error" in the output fails the step
        assert step.terminal and step.final_answer == sf.TOO_MANY_CODE_ERRORS
        assert step.consecutive_errors == 1 and not step.children and step.q_value == -1.0
    else:                 # a good step: the search goes on to the (correct) answer
        assert not step.final_answer and step.consecutive_errors == 0
        (answer,) = [tree.nodes[i] for i in step.children]
        assert answer.final_answer == "1" and answer.q_value == 1.0


# A box after the first ".\n": the reference reads only "We add 2 and 3" (last number 3).
CUT_ANSWER_STEP = "\n<answer>We add 2 and 3.\nThe answer is \\boxed{5}." + EOA


class AnswerAtOnce:
    def propose(self, prompts, num_samples, temperature):
        return [[CUT_ANSWER_STEP] * num_samples for _ in prompts]


def _run_driver(driver, reference_answer_cut):
    """One problem through `driver` with the grader's own extraction (no answer_fn)."""
    problems = [{"question": "Q", "answer": "5"}]
    preset = {"mcts": "round2", "greedy": "greedy", "sampling": "greedy", "beam": "eval_bs"}
    cfg = load_search_config(preset[driver], num_rollouts=1, num_children=1, max_depth=4,
                             initial_num_slots=8, reference_answer_cut=reference_answer_cut)
    if driver == "mcts":
        return mcts.search(problems, AnswerAtOnce(), OkExecutor(), cfg, grade_fn=grade_fn,
                           progress=False)[0]
    if driver == "greedy":
        return mcts.greedy(problems, AnswerAtOnce(), OkExecutor(), cfg, grade_fn=grade_fn,
                           progress=False)[0]
    if driver == "sampling":
        return sampling.sample_solutions(problems, AnswerAtOnce(), OkExecutor(), cfg,
                                         num_samples=2, temperature=1.0)[0]
    return beam.beam_search(problems, AnswerAtOnce(), OkExecutor(), cfg)[0]


@pytest.mark.parametrize("driver", ["mcts", "greedy", "sampling", "beam"])
@pytest.mark.parametrize("reference_answer_cut", [False, True])
def test_reference_answer_cut_reaches_every_driver(driver, reference_answer_cut):
    tree = _run_driver(driver, reference_answer_cut)
    answers = [n.final_answer for n in tree.valid_answer_nodes()]
    assert answers and set(answers) == {"3" if reference_answer_cut else "5"}, answers
    if driver == "mcts":   # terminal-guided: the cut answer is graded wrong (-1)
        (leaf,) = tree.valid_answer_nodes()
        assert leaf.q_value == (-1.0 if reference_answer_cut else 1.0)
    if driver == "beam":
        assert tree.solutions[0]["final_answer"] == answers[0]


def test_greedy_runs_with_a_plain_dict_config(executor):
    cfg = load_search_config("greedy").to_dict()
    assert type(cfg) is dict and type(cfg["greedy"]) is dict
    cfg["greedy"]["max_depth"] = 2
    (tree,) = mcts.greedy([{"question": "Q", "answer": "1"}], OneStepThenAnswer(), executor,
                          cfg, answer_fn=answer_fn, progress=False)
    texts = [n.text for n in tree.bfs()]
    assert texts[1].startswith(ERROR_NONE_STEP) and texts[2] == ANSWER_STEP
    assert tree.nodes[2].final_answer == "1"


def test_settings_name_the_bad_field():
    cfg = load_search_config("round2").to_dict()
    cfg["num_children"] = 0
    with pytest.raises(ValueError, match=r"config.search.num_children must be a number >= 1"):
        MCTSSettings.from_config(cfg)
    cfg = load_search_config("round2").to_dict()
    cfg["num_childern"] = 3
    with pytest.raises(ValueError, match=r"config.search has unknown field\(s\) num_childern"):
        MCTSSettings.from_config(cfg)
    cfg = load_search_config("round2").to_dict()
    cfg["reference_answer_cut"] = 1
    with pytest.raises(ValueError, match=r"config.search.reference_answer_cut must be True or "
                                         r"False, got 1"):
        MCTSSettings.from_config(cfg)
    cfg = load_search_config("round2").to_dict()
    cfg["greedy"]["stop_tags"] = ["<end_of_step>", "</s>"]
    with pytest.raises(ValueError, match=r"config.search.greedy.stop_tags: \['</s>'\]"):
        MCTSSettings.from_config(cfg)


class LengthLimitedProposer:
    """Fits prompts up to `max_chars`; proposes one code step per prompt."""

    def __init__(self, max_chars):
        self.max_chars, self.proposed = max_chars, 0

    def fits(self, prompts):
        return [len(p) <= self.max_chars for p in prompts]

    def propose(self, prompts, num_samples, temperature):
        assert all(len(p) <= self.max_chars for p in prompts)
        self.proposed += len(prompts)
        return [["<code>\nx = 1\n<end_of_step>"] for _ in prompts]


class OkExecutor:
    def run(self, programs):
        from test_search_fakes import Result
        return [Result("") for _ in programs]


def test_a_prompt_that_no_longer_fits_ends_as_a_named_terminal():
    base = len(sf.build_prompt("Q"))
    step = len("<code>\nx = 1\n<end_of_step>")
    # The short question's prompt fits two steps; the long one's fits none.
    proposer = LengthLimitedProposer(base + 2 * step)
    cfg = load_search_config("round2", num_rollouts=2, num_children=1, max_depth=6,
                             initial_num_slots=8)
    summary = {}
    short, long = mcts.search([{"question": "Q", "answer": "1"},
                               {"question": "Q" * (3 * step), "answer": "1"}], proposer,
                              OkExecutor(), cfg, answer_fn=answer_fn, grade_fn=grade_fn,
                              progress=False, summary=summary)
    assert [n.final_answer for n in short.bfs()] == ["", "", "", "", sf.CONTEXT_FULL]
    assert [n.final_answer for n in long.bfs()] == ["", sf.CONTEXT_FULL]
    full = [n for t in (short, long) for n in t.nodes if n.final_answer == sf.CONTEXT_FULL]
    assert all(n.terminal and n.q_value == -1.0 and n.visit_count == 1 for n in full)
    assert summary["context_full"] == 2 and summary["finished"] == 2
    assert not sf.is_valid_final_answer(sf.CONTEXT_FULL)


def test_two_chunks_in_flight_grow_the_serial_trees():
    """Overlapping one chunk's host work with another's device work changes nothing: the
    trees, values and visits are the plain serial path's (proposals are a function of the
    prompt, as with the engine's prompt-keyed seeds)."""
    from test_search_fakes import Result, ScriptedProposer

    class Exec:
        def run(self, programs):
            return [Result("ZeroDivisionError: boom", error=True) if "boom" in p else
                    Result(str(len(p))) for p in programs]

    problems = [{"question": f"Q{i}", "answer": str(i % 3)} for i in range(11)]
    out = {}
    for k in (1, 2):
        cfg = load_search_config("round2", num_rollouts=3, num_children=3, max_depth=5,
                                 batch_size=3, initial_num_slots=8, chunks_in_flight=k)
        trees = mcts.search(problems, ScriptedProposer(seed=5), Exec(), cfg, answer_fn=answer_fn,
                            grade_fn=grade_fn, progress=False)
        out[k] = [t.to_rstar_json() for t in trees]
    assert out[1] == out[2]
    assert sum(len(t) for t in out[1]) > 3 * len(problems)
