"""The code-augmented chain-of-thought step format (rstar_reference.md §3, §4.1).

The bottom layer of the package: it imports nothing else of rstar_jax, so models
(tokenizer special tokens), engine (stop tags), search, data and train all read the
format from here without pulling each other in.

One tree node holds the text of one step up to and including its stop tag. Code
steps end in `<end_of_step>`; the last code step ends in `<end_of_code>` and gets
`"\n<output>{obs}<end_of_output>"` appended; the answer step ends in `<end_of_answer>`.
"""

from __future__ import annotations

CODE = "<code>"
END_OF_STEP = "<end_of_step>"
END_OF_CODE = "<end_of_code>"
OUTPUT = "<output>"
END_OF_OUTPUT = "<end_of_output>"
ANSWER = "<answer>"
END_OF_ANSWER = "<end_of_answer>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"

# Terminal markers of the reference (constants.py), byte for byte ("sove" included), so
# dumps read by the reference's extractors and by ours agree (§2.5).
TOO_MANY_CODE_ERRORS = "Too many consecutive steps have code errors."
TOO_MANY_STEPS = "Fail to sove the problem within limited steps."
NO_VALID_CHILD = "Fail to generate parsable text for next step."
# Ours: a node whose prompt (question + steps so far) leaves no room in the policy's
# context to generate the next step. The reference never sees it (vLLM errors instead);
# like TOO_MANY_STEPS it is neither a valid answer nor a code error for the data rules.
CONTEXT_FULL = "The prompt no longer fits the model's context."
INVALID_TERMINALS = (NO_VALID_CHILD, TOO_MANY_STEPS, TOO_MANY_CODE_ERRORS, CONTEXT_FULL)
PYTHON_ACTION = "python_interpreter"  # the reference's only action name (§3.3)


def is_valid_final_answer(final_answer: str) -> bool:
    """Whether a node's `final_answer` is a real answer and not a failure marker.

    Failure terminals (code errors, too deep, nothing parsable, context full) also carry
    a `final_answer` string, so they are excluded by name (the reference's
    `is_valid_final_answer_node`). A valid answer *leaf* is a node without children
    whose final answer passes this test.
    """
    return bool(final_answer) and final_answer not in INVALID_TERMINALS

# Tags that end one step: the generation engine stops on any of them.
STOP_TAGS = (END_OF_STEP, END_OF_CODE, END_OF_ANSWER)
# Added to the tokenizer as special tokens (reference SFT/PPM tokenizers, §3.2).
SPECIAL_TOKENS = (CODE, END_OF_STEP, END_OF_CODE, OUTPUT, END_OF_OUTPUT, ANSWER,
                  END_OF_ANSWER, USER, ASSISTANT)

# The reference's SFT-model prompt (few_shots/sft_prompt.json). The reference puts
# "\n\n" before <|assistant|> at search time but "\n" in SFT training and PPM prefixes;
# we use one newline everywhere so search sees exactly the training distribution.
PROMPT_TEMPLATE = (USER + ":\n{question}\n" + ASSISTANT
                   + ": Let's think step by step and solve the problem with code.")
# The reference's search-time form, for exact comparison against its dumps.
REFERENCE_SEARCH_PROMPT_TEMPLATE = (USER + ":\n{question}\n\n" + ASSISTANT
                                    + ": Let's think step by step and solve the problem with code.")


def build_prompt(question: str, *, reference_newlines: bool = False) -> str:
    """The policy/PPM prompt for one question; steps so far are appended with no separator."""
    template = REFERENCE_SEARCH_PROMPT_TEMPLATE if reference_newlines else PROMPT_TEMPLATE
    return template.format(question=question.strip())


def is_answer_step(step_text: str) -> bool:
    """A step containing "boxed" is a final-answer step (reference §3.3)."""
    return "boxed" in step_text


def extract_program(text: str) -> str:
    """Python source in a concatenation of code steps (reference §3.4 `extract_program`).

    `<end_of_step>` markers are dropped; lines after a line containing `<code>` and before
    `<end_of_code>` are kept. Without any `<code>` line the whole text is the program.
    """
    text = text.replace(END_OF_STEP, "")
    lines = text.split("\n")
    start = None
    for i, line in enumerate(lines):
        if CODE in line:
            start = i
            break
    if start is None:
        body = lines
    else:
        body = [lines[start].split(CODE, 1)[1]] + lines[start + 1:]
    program = []
    for line in body:
        if END_OF_CODE in line:
            program.append(line.split(END_OF_CODE, 1)[0])
            break
        program.append(line)
    return "\n".join(program).strip("\n")


def split_stop_tag(step_text: str) -> tuple[str, str]:
    """(text without its stop tag, the stop tag or "" when generation hit its token limit).

    The reference keys duplicate detection on the text without the tag (vLLM's
    `output.text`) and answer collapse on the tag alone (rstar_reference.md §9.1-9.2).
    """
    for tag in STOP_TAGS:
        if step_text.endswith(tag):
            return step_text[: -len(tag)], tag
    return step_text, ""


def wrap_output(observation: str) -> str:
    """A code result as the model sees it after `<end_of_code>` (§3.5)."""
    return f"{OUTPUT}{observation}{END_OF_OUTPUT}"


def assemble_program(history: list[str], step_text: str) -> str:
    """The program to run for a new code step: earlier code steps of the same block + this one.

    `history` holds the code-step texts (without appended outputs) from the start of the
    current code block to the parent, root side first; the block starts after the last
    node whose text holds `<end_of_code>` or `<end_of_output>` (the reference's
    `collect_action_inputs`, §3.4). The whole program is re-run at every step.
    """
    return extract_program("".join(history) + step_text)
