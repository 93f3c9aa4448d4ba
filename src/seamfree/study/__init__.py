"""The study: reproduce the paper's trade-off on real data (``seamfree study``), and the newcomer's demo.

- :mod:`seamfree.study.config`: profiles (quick, standard, full) and the study configuration
- :mod:`seamfree.study.runs`: the runs of a study, identified by content hashes
- :mod:`seamfree.study.evaluate`: how one model is measured (``diagnose`` at two tile sizes)
- :mod:`seamfree.study.runner`: ``run_study``: cached, resumable, in pieces; ``study.csv``
- :mod:`seamfree.study.statistics`, :mod:`seamfree.study.protocol`: seed-level intervals; the pre-registered rules
- :mod:`seamfree.study.claims`, :mod:`seamfree.study.results`: verdicts on the paper's claims, results page
- :mod:`seamfree.study.demo`: ``seamfree demo``
"""

from seamfree.study.claims import CLAIMS, ClaimCheck, check_claims
from seamfree.study.config import PROFILES, StudyConfig, StudyDataset, load_study_config
from seamfree.study.evaluate import METRICS, Evaluation, evaluate_model, load_test_pairs
from seamfree.study.results import Hardware, describe_hardware, write_results
from seamfree.study.runner import StudyResult, read_rows, run_directories, run_study, select_runs
from seamfree.study.runs import StudyRun, plan_runs

__all__ = [
    "CLAIMS",
    "METRICS",
    "PROFILES",
    "ClaimCheck",
    "Evaluation",
    "Hardware",
    "StudyConfig",
    "StudyDataset",
    "StudyResult",
    "StudyRun",
    "check_claims",
    "describe_hardware",
    "evaluate_model",
    "load_study_config",
    "load_test_pairs",
    "plan_runs",
    "read_rows",
    "run_directories",
    "run_study",
    "select_runs",
    "write_results",
]
