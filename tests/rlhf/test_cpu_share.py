"""How `rlhf up` shares the cores between serving's engine and the learner (rlhf/cpu_share.py)."""

from __future__ import annotations

import os

import pytest

from rlhf.cpu_share import CpuListError, format_cpus, parse_cpus, shares_for_up, split, usable
from rlhf.settings import Settings


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("2-4", [2, 3, 4]), ("0,2-3", [0, 2, 3]), ("3,1,1", [1, 3]),
                                        (" 1 , 5-6 ", [1, 5, 6])])
def test_cpu_lists_parse(text, cpus):
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "4-2", "1,,2", "1.5", "0x1"])
def test_bad_cpu_lists_are_refused(text):
    with pytest.raises(CpuListError):
        parse_cpus(text)


@pytest.mark.parametrize("cpus, text", [([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([7, 3, 4], "3-4,7"), ([], "")])
def test_cpu_lists_format_as_vllm_reads_them(cpus, text):
    assert format_cpus(cpus) == text
    if cpus:
        assert parse_cpus(text) == sorted(cpus)


@pytest.mark.parametrize("cpus, serving, learner", [
    ([0, 1], [0], [1]),
    ([0, 1, 2, 3], [0, 1, 2], [3]),
    (list(range(8)), list(range(6)), [6, 7]),
    ([5], [5], [5]),  # one core: nothing to split
])
def test_the_learner_gets_the_last_quarter_and_at_least_one_core(cpus, serving, learner):
    assert split(cpus) == (serving, learner)


def test_cores_this_process_may_not_use_are_refused():
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(CpuListError, match=f"names core\\(s\\) {outside}"):
        usable(str(outside))


def test_up_fills_the_unset_share_with_the_cores_the_other_leaves():
    allowed = sorted(os.sched_getaffinity(0))
    serving, learner = shares_for_up("", "")
    assert (parse_cpus(serving), parse_cpus(learner)) == split(allowed)
    first = str(allowed[0])
    rest = format_cpus(allowed[1:])  # a one-core machine: empty (the other binds as it would alone)
    assert shares_for_up(first, "") == (first, rest)
    assert shares_for_up("", first) == (rest, first)
    assert shares_for_up(first, first) == (first, first)  # both given: as given
    everything = format_cpus(allowed)
    assert shares_for_up("", everything) == ("", everything)  # nothing left: serving binds as vLLM chooses


def test_settings_refuse_a_bad_cpu_list(monkeypatch):
    monkeypatch.setenv("RLHF_LEARNER_CPUS", "3-1")
    with pytest.raises(ValueError, match="RLHF_LEARNER_CPUS: '3-1': the range 3-1 runs backwards"):
        Settings()
    monkeypatch.setenv("RLHF_LEARNER_CPUS", " 0 ")
    assert Settings().learner_cpus == "0"
