"""The last line of a fit or test, from a results dictionary."""

from __future__ import annotations

from fellrec.metrics.headline import result_headline, slice_lines, worst_client

RESULTS = {
    "overall": {"ndcg@10": 0.22121, "users": 10},
    "clients": {
        "0": {"users": 4, "ndcg@10": 0.3},
        "1": {"users": 0},
        "2": {"users": 3, "ndcg@10": 0.18404},
        "3": {"users": 3, "ndcg@10": 0.25},
    },
    "ci": {
        "overall": {"ndcg@10": [0.19531, 0.24779]},
        "clients": {"2": {"ndcg@10": [0.12111, 0.24733]}},
    },
    "popularity": {
        "overall": {"ndcg@10": 0.09},
        "clients": {"0": {"ndcg@10": 0.1}, "2": {"ndcg@10": 0.0512}},
    },
}


def test_the_headline_names_overall_worst_client_popularity_and_the_file():
    assert result_headline(RESULTS, "runs/q/results.json") == (
        "test ndcg@10 0.2212 [0.1953, 0.2478], worst client (2) 0.1840 [0.1211, 0.2473]; "
        "popularity 0.0900, worst client (2) 0.0512; results in runs/q/results.json"
    )


def test_missing_parts_are_left_out_not_invented():
    bare = {"overall": {"ndcg@10": 0.5}, "clients": {"0": {"users": 0}}}
    assert result_headline(bare, None) == "test ndcg@10 0.5000; results.json not written"
    assert worst_client(bare, "ndcg@10") is None
    assert result_headline({}, None).startswith("test ndcg@10 -;")


def test_slice_lines_show_each_grouping_against_popularity():
    results = {
        "slices": {
            "groups": {
                "popularity/head": {"users": 3, "ndcg@10": 0.25, "ci": {"ndcg@10": [0.1, 0.4]}},
                "popularity/new": {"users": 0},
                "history/short": {"users": 2, "ndcg@10": 0.5, "ci": {}},
            }
        },
        "popularity": {"slices": {"groups": {"popularity/head": {"users": 3, "ndcg@10": 0.125}}}},
    }
    assert slice_lines(results) == [
        "test ndcg@10 by popularity: head 0.2500 [0.1000, 0.4000] (3 users; popularity "
        "0.1250), new - (0 users)",
        "test ndcg@10 by history: short 0.5000 (2 users)",
    ]
    assert slice_lines(RESULTS) == []  # results without slices (older runs, deployments)
