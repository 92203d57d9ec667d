"""Benchmark loading: shipped sets, local files, and every malformed-input error path."""

import dataclasses
import json

import pytest

from rstar_jax.data.benchmarks import (
    BENCHMARK_NAMES, BENCHMARK_SIZES, BenchmarkFormatError, Problem, canonical_benchmark_name,
    load_benchmark)

# Record counts of the reference's eval_data/ files (rstar_reference.md §5), written out
# here rather than read from the module so a changed file or table is caught.
EXPECTED_SIZES = {
    "gsm8k": 1319, "math": 5000, "math500": 500, "aime2024": 30, "amc23": 40,
    "olympiadbench": 675, "collegemath": 2818, "omni_math": 4428, "gaokao2023en": 385,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_each_benchmark_loads_with_reference_record_count(name):
    problems = load_benchmark(name)
    assert len(problems) == EXPECTED_SIZES[name] == BENCHMARK_SIZES[name]
    assert all(isinstance(p, Problem) and p.question.strip() for p in problems)
    assert len({p.index for p in problems}) == len(problems), "indices must be unique"


def test_benchmark_names_are_the_nine_sets():
    assert set(BENCHMARK_NAMES) == set(EXPECTED_SIZES)


@pytest.mark.parametrize("alias,name", [
    ("MATH_test", "math"), ("GSM8K", "gsm8k"), ("omni_test", "omni_math"), ("omni", "omni_math"),
    ("AIME-2024", "aime2024"), ("math500_test", "math500"), ("Gaokao2023en", "gaokao2023en")])
def test_file_stems_and_variants_name_the_same_benchmark(alias, name):
    assert canonical_benchmark_name(alias) == name
    assert load_benchmark(alias, limit=3) == load_benchmark(name, limit=3)


def test_known_first_records_of_gsm8k_and_math():
    gsm = load_benchmark("gsm8k", limit=2)
    assert [p.answer for p in gsm] == ["18", "3"]
    assert gsm[0].index == 0 and "Janet" in gsm[0].question
    math = load_benchmark("math", limit=3)
    assert [p.answer for p in math] == ["2", "10", "\\dfrac{9}{7}"]


def test_limit_keeps_a_prefix():
    assert len(load_benchmark("aime2024", limit=5)) == 5
    assert load_benchmark("aime2024", limit=0) == []
    assert len(load_benchmark("aime2024", limit=1000)) == 30


def test_list_answers_become_alternatives():
    by_index = {p.index: p for p in load_benchmark("math")}
    p = by_index[334]
    assert p.answer == "3" and p.alternatives == ("-3",) and p.answers == ("3", "-3")


def test_proof_problems_without_answer_are_kept_but_flagged():
    omni = load_benchmark("omni_math")
    assert sum(not p.has_answer for p in omni) == 9
    assert sum(not p.has_answer for p in load_benchmark("gaokao2023en")) == 2


def test_problem_is_frozen():
    p = Problem(index=0, question="q", answer="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "2"


def test_local_json_list_and_wrapped_form(tmp_path):
    records = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4, "index": "b"}]
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps(records))
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"example": records}))
    expected = [Problem(0, "1+1?", "2"), Problem("b", "2+2?", "4")]
    assert load_benchmark(str(plain)) == expected
    assert load_benchmark(wrapped) == expected  # a Path works too


def test_local_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a?", "answer": "1"}\n\n{"question": "b?", "answer": ["2", "3"]}\n')
    assert load_benchmark(str(path)) == [Problem(0, "a?", "1"), Problem(1, "b?", "2", ("3",))]


def test_unknown_name_lists_known_benchmarks():
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark 'mathh'.*gsm8k.*omni_math"):
        load_benchmark("mathh")


def test_error_is_a_value_error():
    assert issubclass(BenchmarkFormatError, ValueError)


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(BenchmarkFormatError, match="nope.json.*does not exist"):
        load_benchmark(missing)


def test_wrong_extension(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question,answer\n")
    with pytest.raises(BenchmarkFormatError, match=r"p\.csv.*\.json.*\.jsonl"):
        load_benchmark(str(path))


@pytest.mark.parametrize("content,pattern", [
    ("{not json", r"bad\.json: not valid JSON"),
    ('{"question": "q", "answer": "1"}', r"bad\.json: expected a JSON list.*got dict"),
    ('[{"question": "q", "answer": "1"}, 5]', r"bad\.json: record 1 must be a JSON object, got int"),
    ('[{"question": "q", "answer": "1"}, {"answer": "2"}]', r"bad\.json: record 1 has no 'question'"),
    ('[{"question": "q"}]', r"bad\.json: record 0 has no 'answer'"),
    ('[{"question": "", "answer": "1"}]', r"record 0: field 'question' must be a non-empty string"),
    ('[{"question": 3, "answer": "1"}]', r"record 0: field 'question' must be a non-empty string"),
    ('[{"question": "q", "answer": {"x": 1}}]', r"record 0: field 'answer' must be a string"),
    ('[{"question": "q", "answer": []}]', r"record 0: field 'answer' must be a string"),
    ('[{"question": "q", "answer": true}]', r"record 0: field 'answer' must be a string"),
    ('[{"question": "q", "answer": "1", "index": [1]}]', r"record 0: field 'index' must be an int"),
])
def test_malformed_json_names_file_record_and_field(tmp_path, content, pattern):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BenchmarkFormatError, match=pattern):
        load_benchmark(str(path))


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": oops}\n')
    with pytest.raises(BenchmarkFormatError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_benchmark(str(path))


def test_bad_limit():
    with pytest.raises(BenchmarkFormatError, match="limit must be a non-negative int"):
        load_benchmark("gsm8k", limit=-1)
