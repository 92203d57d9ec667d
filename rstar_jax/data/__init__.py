"""Problems and training data: the nine benchmarks, problem sets (benchmarks, files,
reasoning-gym specs), and the data rules that turn search trees into the policy's SFT
set and the PPM's preference pairs (rstar_reference.md §4), in our formats and the
reference's.

benchmarks.py  the shipped benchmarks and local problem files
problems.py    problem records for search; problem-set specs (reasoning-gym included)
rstar_trees.py the data rules' read-only view of saved trees (read by search/host_tree)
sft_data.py    trees -> SFT rows (top-2 correct traces by mean Q)
ppm_pairs.py   trees -> step-level preference pairs
reference_formats.py  the reference's SFT and pair files, checked field for field
"""

from rstar_jax.data.benchmarks import (BENCHMARK_NAMES, BenchmarkFormatError, Problem,
                                       load_benchmark)
from rstar_jax.data.ppm_pairs import (PairRules, PreferencePair, build_ppm_pairs, rules_from_config,
                                      to_reference_ppm, to_rows, write_ppm_jsonl,
                                      write_reference_ppm_json)
from rstar_jax.data.reference_formats import (REFERENCE_PPM_FIELDS, REFERENCE_SFT_FIELDS,
                                              ReferenceFormatError, check_reference_ppm,
                                              check_reference_sft, read_reference_ppm,
                                              read_reference_sft)
from rstar_jax.data.problems import SearchProblem, load_problems, normalize_problem
from rstar_jax.data.rstar_trees import TreeNode, TreeRecord, load_tree_records, parse_tree_record
from rstar_jax.data.sft_data import (build_sft_rows, to_reference_sft, write_reference_sft_json,
                                     write_sft_jsonl)

__all__ = [
    "BENCHMARK_NAMES", "BenchmarkFormatError", "PairRules", "PreferencePair", "Problem",
    "REFERENCE_PPM_FIELDS", "REFERENCE_SFT_FIELDS", "ReferenceFormatError", "SearchProblem",
    "TreeNode", "TreeRecord", "build_ppm_pairs", "build_sft_rows", "check_reference_ppm",
    "check_reference_sft", "load_benchmark", "load_problems", "load_tree_records",
    "normalize_problem", "parse_tree_record", "read_reference_ppm", "read_reference_sft",
    "rules_from_config", "to_reference_ppm", "to_reference_sft", "to_rows", "write_ppm_jsonl",
    "write_reference_ppm_json", "write_reference_sft_json", "write_sft_jsonl",
]
