"""The throughput benchmark's pure helpers: truth, gauge matching, tables, profile parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile_worker import (
    EVENT_LOOP,
    by_module,
    by_stage,
    module_category,
    parse_collapsed,
    stage_of,
    task_frames,
    top_functions,
)
from bench.throughput import (
    EXPERIMENT,
    METRICS,
    event_counter,
    median_run,
    mismatches,
    paired_json,
    render_markdown,
    target_of,
    truth_of,
)
from monitor.workload import simulate_units, to_events


def _labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def _gauges(truth, *, off: float = 0.0) -> dict:  # type: ignore[no-untyped-def]
    m = {}
    for variant, n in truth.units.items():
        common = {"experiment": EXPERIMENT, "variant": variant, "stage": "50"}
        m[("rampmon_exposures", _labels(**common))] = float(n)
        for metric in METRICS:
            labels = _labels(**common, metric=metric)
            m[("rampmon_metric_units", labels)] = float(n)
            m[("rampmon_metric_mean", labels)] = truth.means[(variant, metric)] + off
    return m


@pytest.fixture(scope="module")
def events() -> tuple[list[dict], list[dict]]:
    return to_events(
        simulate_units(300, seed=7), experiment=EXPERIMENT, start_ts=1e9, duration_s=600, seed=7
    )


def test_truth_counts_every_event_and_unit(events) -> None:  # type: ignore[no-untyped-def]
    exposures, telemetry = events
    truth = truth_of(exposures, telemetry)
    assert truth.events == len(exposures) + len(telemetry)
    assert sum(truth.units.values()) == 300
    assert set(truth.units) == {"control", "treatment"}
    assert set(truth.means) == {(v, m) for v in truth.units for m in METRICS}


def test_mismatches_empty_only_when_gauges_equal_truth(events) -> None:  # type: ignore[no-untyped-def]
    truth = truth_of(*events)
    assert mismatches(_gauges(truth), truth) == []
    assert mismatches({}, truth)  # nothing exported yet
    off = mismatches(_gauges(truth, off=1e-3), truth)
    assert off and all(s.startswith("metric_mean") for s in off)
    short = _gauges(truth)
    short[("rampmon_exposures", _labels(experiment=EXPERIMENT, variant="control", stage="50"))] -= 1
    assert mismatches(short, truth) == [
        f"exposures[control]={truth.units['control'] - 1.0} != {truth.units['control']}"
    ]


def test_event_counters_agree_on_singles_and_envelopes(events) -> None:  # type: ignore[no-untyped-def]
    import orjson

    exposures, telemetry = events
    for decode in ("json", "orjson", "msgspec-struct", "msgspec"):
        count_e = event_counter(decode, exposures=True)
        count_t = event_counter(decode, exposures=False)
        assert count_e(orjson.dumps(exposures[0])) == (1, 0)
        assert count_t(orjson.dumps(telemetry[:100])) == (100, 0)


def test_median_run_and_targets() -> None:
    runs = [
        {"seconds": 3.0, "peak_rss_bytes": 1},
        {"seconds": 1.0, "peak_rss_bytes": 5},
        {"seconds": 2.0, "peak_rss_bytes": 2},
    ]
    r = median_run(runs)
    assert r["seconds"] == 2.0 and r["peak_rss_bytes"] == 5
    assert r["runs_seconds"] == [3.0, 1.0, 2.0]
    mode = {
        "baseline": {"json": {"events_per_second": 100.0}, "msgspec": {"events_per_second": 200.0}},
        "rampmon": {"events_per_second": 60.0},
    }
    one = target_of(1, mode)
    assert one is not None and one["met"] and one["ratio_msgspec"] == pytest.approx(0.3)
    hundred = target_of(100, mode)
    assert hundred is not None and not hundred["met"]  # 0.3 of msgspec < 0.8


def test_render_markdown_has_one_row_per_path() -> None:
    base = {
        "events": 10,
        "seconds": 0.5,
        "events_per_second": 20.0,
        "peak_rss_bytes": 50 << 20,
    }
    results = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "x",
        "machine": {"nproc": 2},
        "runtime_seconds": 1.0,
        "parameters": {"units": 1, "events": 10, "exposures": 2, "telemetry": 8, "partitions": 4},
        "modes": [
            {
                "envelope": 1,
                "messages": 10,
                "baseline": {"json": base, "msgspec": {**base, "events_per_second": 40.0}},
                "rampmon": {**base, "events_per_second": 10.0},
                "target": target_of(
                    1,
                    {
                        "baseline": {
                            "json": {"events_per_second": 20.0},
                            "msgspec": {"events_per_second": 40.0},
                        },
                        "rampmon": {"events_per_second": 10.0},
                    },
                ),
            }
        ],
    }
    md = render_markdown(results)
    rows = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 3
    assert "| rampmon worker | 10 | 0.50 | 10 | 0.500 | 0.250 | 50 |" in md
    assert "target 50%: met" in md
    assert "Paired" not in md  # results from before the paired runs render as they did
    results["modes"][0]["paired_json"] = paired_json([20.0, 40.0, 25.0], [10.0, 10.0, 15.0])
    assert "json run on the same backlog just before it: 50.0%, 25.0%, 60.0%; median 50.0%." in (
        render_markdown(results)
    )


def test_paired_ratios_pair_each_worker_run_with_the_baseline_before_it() -> None:
    # the machine slowed down for the second pair: both runs of it alike
    pj = paired_json([100.0, 50.0, 100.0], [45.0, 24.0, 52.0])
    assert pj["ratios"] == pytest.approx([0.45, 0.48, 0.52])
    assert pj["median"] == pytest.approx(0.48)
    assert paired_json([], [])["median"] is None


RAW = """\
thread (1): MainThread;<module> (streams/cli.py:300);run_forever (asyncio/base_events.py:607);\
BaseEventLoop._run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80);\
Rampmon._build_app.<locals>.ingest (streams/app.py:140);Ingest.process (streams/ingest.py:180);\
TableUnitStore.put (streams/ingest.py:60);Table.__setitem__ (faust/tables/table.py:99);\
Collection.send_changelog (faust/tables/base.py:279) 7
thread (1): MainThread;<module> (streams/cli.py:300);Worker.execute_from_commandline \
(mode/worker.py:264);BaseEventLoop._run_once (asyncio/base_events.py:1922);\
EpollSelector.select (selectors.py:468) 3
thread (1): MainThread;<module> (streams/cli.py:300);Worker.execute_from_commandline \
(mode/worker.py:264);BaseEventLoop._run_once (asyncio/base_events.py:1922);\
Handle._run (asyncio/events.py:80);Ingest.process (streams/ingest.py:181);\
Decoder._decode (streams/decode.py:100) 2
thread (2): Thread-1;AIOKafkaConnection.send (aiokafka/conn.py:430);Logger.debug \
(logging/__init__.py:1477);Logger._log (logging/__init__.py:1632) 1
"""


def test_parse_collapsed_and_categories() -> None:
    prof = parse_collapsed(RAW.splitlines())
    assert prof.total == 13
    assert prof.threads == {"thread (1): MainThread": 12, "thread (2): Thread-1": 1}
    stages = by_stage(prof)
    assert stages["table write, sync: Table.__setitem__ -> on_key_set -> send_changelog"] == 7
    assert stages[EVENT_LOOP] == 3  # the entry points above the loop count for nothing
    assert stages["decode: streams.decode.Decoder (msgspec + checks)"] == 2
    assert stages["logging: LogRecords for DEBUG calls (root logger left at DEBUG)"] == 1
    modules = by_module(prof)
    assert modules["faust"] == 7 and modules["streams (ours)"] == 2
    assert modules["asyncio + selectors (stdlib)"] == 3 and modules["logging (stdlib)"] == 1
    self_top, incl_top = top_functions(prof, k=20)
    assert self_top[0] == ("Collection.send_changelog (faust/tables/base.py)", 7)
    assert dict(incl_top)["Ingest.process (streams/ingest.py)"] == 9


def test_module_category_and_task_frames() -> None:
    assert module_category("/x/.venv/lib/python3.11/site-packages/numpy/core/a.py") == "numpy"
    assert module_category("<frozen runpy>") == "python stdlib, other"
    assert module_category("json/decoder.py") == "python stdlib, other"
    assert module_category("<string>").startswith("generated code")
    frames = (("main", "streams/cli.py"), ("Handle._run", "asyncio/events.py"), ("f", "x.py"))
    assert task_frames(frames) == (("f", "x.py"),)
    assert stage_of((("main", "streams/cli.py"), ("Handle._run", "asyncio/events.py"))) == (
        EVENT_LOOP
    )
    assert task_frames(()) == ()


def test_results_name_uncommitted_benchmark_code_but_not_written_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A benchmark that times code of its own (bench.floor's sketch) must say when that
    code was not committed; the results and README a benchmark writes must not count."""
    import subprocess

    from bench import throughput

    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "monitor").mkdir()
    (repo / "bench" / "floor.py").write_text("x = 1\n")
    (repo / "monitor" / "m.py").write_text("y = 1\n")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    monkeypatch.setattr(throughput, "ROOT", repo)
    assert throughput.code_state()["dirty_files"] == []
    (repo / "bench" / "README.md").write_text("table\n")
    (repo / "bench" / "results" / "floor.json").write_text("{}\n")
    (repo / "bench" / "results" / "scratch.py").write_text("z = 1\n")
    assert throughput.code_state()["dirty_files"] == []
    (repo / "bench" / "floor.py").write_text("x = 2\n")
    state = throughput.code_state()
    assert state["dirty_files"] == ["bench/floor.py"] and state["diff_sha256"]


def test_a_childs_rate_counts_only_a_child_that_took_every_event() -> None:
    from bench.throughput import with_rate

    assert (
        with_rate({"events": 10, "rejected": 0, "seconds": 2.0}, 10, decoded=True, what="b")[
            "events_per_second"
        ]
        == 5.0
    )
    # a child that decodes nothing is given the produced count
    assert with_rate({"events": 0, "seconds": 2.0}, 10, decoded=False, what="b")["events"] == 10
    for wrong in ({"events": 9, "rejected": 0}, {"events": 10, "rejected": 1}):
        with pytest.raises(RuntimeError, match="b decoded"):
            with_rate({**wrong, "seconds": 1.0}, 10, decoded=True, what="b")
