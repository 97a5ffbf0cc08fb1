"""``mixdiff bench --service``'s tables: each schedule's median times over the rounds and each
precision's mean step, as the server's per-step records give them."""

from bench import service


def _run(total: float, steps: dict[str, list[float]]) -> dict:
    """One generation's JSON as the benchmark keeps it: timings, schedule and steps by precision."""
    schedule = [p for p, seconds in steps.items() for _ in seconds]
    return {"total": total, "steps": sum(map(sum, steps.values())), "vae_decode": 1.0,
            "schedule": schedule, "by_precision": steps}  # fmt: skip


def test_summary_gives_each_precisions_mean_step_median_over_rounds():
    runs = [
        _run(10.0, {"bf16-aot": [4.0, 4.0], "int8": [2.0, 3.0, 2.5]}),
        _run(12.0, {"bf16-aot": [5.0, 4.0], "int8": [3.0, 3.0, 3.0]}),
        _run(11.0, {"bf16-aot": [4.0, 4.2], "int8": [2.0, 2.0, 2.0]}),
    ]
    summary = service._summary(runs)
    assert summary["steps"] == "bf16-aot×2 int8×3"
    assert summary["total_seconds"] == 11.0
    assert summary["step_seconds"] == {"bf16-aot": 4.1, "int8": 2.5}


def test_markdown_shows_the_mean_steps():
    summary = {**service._summary([_run(10.0, {"bf16": [4.0], "int8": [2.5]})]), "vs_bf16": 1.0}
    result = {
        "model": "sd15 architecture, random weights", "size": 512, "steps": 2, "rounds": 1, "cores": 2,
        "torch": "2.13.0", "cpu": "a CPU", "artifacts": {},
        "runs": [{"bf16": "eager", "ready_seconds": 20.0, "worker_rss_at_ready_bytes": 1 << 30,
                  "worker_peak_rss_bytes": 2 << 30, "schedules": {"bf16/int8 k=5": summary}}],
    }  # fmt: skip
    row = service.markdown(result).splitlines()[4]
    assert row.split(" | ")[3:7] == ["bf16/int8 k=5", "bf16×1 int8×1", "10.0", "6.5"]
    assert "| bf16 4.00, int8 2.50 |" in row
