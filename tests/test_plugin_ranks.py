"""Tests for nwor.plugin_ranks: per-rank sums of the plugin's counters and the cross-rank verdict (pure logic;
tests/test_engine_tp2.py checks the same blocks on a real two-rank CPU engine)."""
from __future__ import annotations

import json

from nwor import plugin_ranks as pr


def _rank(rank, stopped, checks, steps, histogram, pid=100):
    # One rank's entry of `read_stats(llm)["ranks"]`, as the RPC returns it.
    return {"rank": rank, "tp_rank": rank, "pid": pid + rank, "device": f"cuda:{rank}", "tokens_stopped": stopped,
            "checks": checks, "steps": steps, "draft_length_histogram": histogram}


def _worker(rank, hooked=True, pid=100):
    return {"rank": rank, "tp_rank": rank, "pid": pid + rank, "device": f"cuda:{rank}", "hook_installed": hooked,
            "drafter": "NworEagleProposer" if hooked else "EagleProposer"}


def test_add_sums_each_rank_over_batches_whatever_the_histogram_keys():
    total = pr.add(None, [_rank(0, 3, 10, 4, {4: 4}), _rank(1, 3, 10, 4, {4: 4})])
    total = pr.add(total, [_rank(0, 1, 5, 2, {"2": 1, "4": 1}), _rank(1, 2, 5, 2, {2: 1, 4: 1})])
    assert total == [
        {"rank": 0, "tokens_stopped": 4, "checks": 15, "steps": 6, "draft_length_histogram": {2: 1, 4: 5}},
        {"rank": 1, "tokens_stopped": 5, "checks": 15, "steps": 6, "draft_length_histogram": {2: 1, 4: 5}},
    ]
    assert pr.add(total, [_rank(0, None, 1, 1, {})])[0]["tokens_stopped"] is None  # missing stays missing


def test_two_identical_ranks_are_consistent():
    counters = {"run": pr.add(None, [_rank(0, 3, 10, 4, {4: 4}), _rank(1, 3, 10, 4, {4: 4})]),
                "baseline": pr.add(None, [_rank(0, 0, 0, 4, {4: 4}), _rank(1, 0, 0, 4, {4: 4})])}
    block = pr.replicate_block([_worker(0), _worker(1)], counters)
    assert block["num_ranks"] == 2 and block["consistent"] is True and block["differences"] == []
    assert block["verdict"] == "identical counters on all 2 ranks (2 arm(s))"
    assert [r["pid"] for r in block["ranks"]] == [100, 101] and all(r["hook_installed"] for r in block["ranks"])
    # It stays JSON: histogram keys become strings and still compare equal after a round trip.
    again = json.loads(json.dumps(block))
    assert pr.differences(again["counters"]["run"]) == []


def test_differing_ranks_say_which_counter_and_how():
    counters = {"run": pr.add(None, [_rank(0, 3, 10, 4, {4: 4}), _rank(1, 5, 10, 4, {2: 1, 4: 3})])}
    block = pr.replicate_block([_worker(0), _worker(1)], counters)
    assert block["consistent"] is False and "differ" in block["verdict"]
    assert block["differences"] == [
        {"arm": "run", "counter": "tokens_stopped", "values": [3, 5]},
        {"arm": "run", "counter": "draft_length_histogram", "values": [{"4": 4}, {"2": 1, "4": 3}]},
    ]


def test_one_rank_has_nothing_to_compare():
    block = pr.replicate_block([_worker(0)], {"run": pr.add(None, [_rank(0, 3, 10, 4, {4: 4})])})
    assert block["num_ranks"] == 1 and block["consistent"] is None
    assert block["verdict"] == "1 rank: nothing to compare"
    run = pr.run_block([{"instance": 0, "plugin_ranks": block}])
    assert run["num_ranks"] == 1 and run["hook_installed"] == [True] and run["consistent"] is None
    assert run["verdict"].startswith("1 rank")


def test_run_block_over_instances():
    same = {"run": pr.add(None, [_rank(0, 1, 2, 3, {4: 3}), _rank(1, 1, 2, 3, {4: 3})])}
    other = {"run": pr.add(None, [_rank(0, 1, 2, 3, {4: 3}), _rank(1, 0, 2, 3, {4: 3})])}
    replicates = [{"instance": 0, "plugin_ranks": pr.replicate_block([_worker(0), _worker(1)], same)},
                  {"instance": 1, "plugin_ranks": pr.replicate_block([_worker(0, pid=200), _worker(1, False, 200)],
                                                                     other)},
                  {"instance": 2, "plugin_ranks": None}]  # an engine without nwor's plugin
    run = pr.run_block(replicates)
    assert run["num_ranks"] == 2 and run["instances"] == 2
    assert run["hook_installed"] == [True, False]  # rank 1 was not hooked in instance 1
    assert run["ranks"][1]["pids"] == [101, 201] and run["ranks"][0]["devices"] == ["cuda:0"]
    assert run["consistent"] is False
    assert run["differences"] == [{"instance": 1, "arm": "run", "counter": "tokens_stopped", "values": [1, 0]}]
    assert run["verdict"] == "counters differ between ranks in 1 place(s) (2 engine instance(s) x 1 arm(s))"
    assert pr.run_block([{"instance": 0, "plugin_ranks": None}]) is None


def test_differences_are_capped_but_counted():
    arms = {f"a{i}": pr.add(None, [_rank(0, i, 2, 3, {4: 3}), _rank(1, i + 1, 2, 3, {4: 3})]) for i in range(12)}
    block = pr.replicate_block([_worker(0), _worker(1)], arms)
    assert len(block["differences"]) == pr.MAX_DIFFERENCES and block["more_differences"] == 2
    run = pr.run_block([{"instance": 0, "plugin_ranks": block}])
    assert len(run["differences"]) == pr.MAX_DIFFERENCES and run["more_differences"] == 2
