#!/usr/bin/env python3
"""Per-fault figures from a `loadtest ws` JSON report (see docs/reliability.md).

    analyze.py REPORT.json NAME FAULT_START FAULT_END   -> one JSON summary on stdout
    analyze.py --table SUMMARY.json...                  -> a Markdown table

Seconds are since the load started (the report's timeline counts turns by the second they
started in; the driver's clock and the harness's differ by well under a second).

- success rate: turns that started during the fault and completed / all that started then
  (at least the 5 s after an instantaneous fault);
- p99 TTFT during the fault: the worst per-second p99 over the same seconds (an upper bound
  of the window's p99; the report keeps per-second histograms only as percentiles);
- time to recover: from the end of the fault to the first second that starts 5 seconds in a
  row with a success rate >= 99 % (and some turns);
- lost: acknowledged messages without a terminal event, duplicate terminals, seq holes
  never filled (`lost_events`) and repeats (`duplicated_events`) over the whole run; seqs a
  crash's `interrupted` event declared never to come are `skipped_events`, not holes.
"""
import json
import sys

WINDOW_MIN = 5
RECOVERY_RUN = 5
RECOVERED = 0.99


def summarize(path, name, start, end):
    report = json.load(open(path))
    seconds = {s["second"]: s for s in report["timeline"]}
    lo = int(start)
    hi = max(int(end), lo + WINDOW_MIN - 1)
    window = [seconds.get(s, {"turns": 0, "errors": 0, "ttft_p99": 0.0}) for s in range(lo, hi + 1)]
    turns = sum(s["turns"] for s in window)
    errors = sum(s["errors"] for s in window)
    baseline = [s for k, s in seconds.items() if 12 <= k < lo]
    base_p99 = max((s["ttft_p99"] for s in baseline), default=0.0)

    def ok(k):
        s = seconds.get(k)
        if not s or s["turns"] + s["errors"] == 0:
            return False
        return s["turns"] / (s["turns"] + s["errors"]) >= RECOVERED

    last = max(seconds) if seconds else 0
    recovered_at = None
    for k in range(int(end), last - RECOVERY_RUN + 2):
        if all(ok(k + i) for i in range(RECOVERY_RUN)):
            recovered_at = k
            break
    return {
        "drill": name,
        "fault_start_s": start,
        "fault_end_s": end,
        "turns_in_window": turns + errors,
        "success_rate_in_window": round(turns / (turns + errors), 4) if turns + errors else None,
        "ttft_p99_in_window_ms": round(max((s["ttft_p99"] for s in window), default=0.0), 1),
        "ttft_p99_baseline_ms": round(base_p99, 1),
        "recovery_s": None if recovered_at is None else round(max(0.0, recovered_at - end), 1),
        "turns_completed": report["turns_completed"],
        "errors_by_code": report["errors_by_code"],
        "acked_without_terminal": report.get("acked_without_terminal"),
        "duplicate_terminals": report.get("duplicate_terminals"),
        "lost_events": report["lost_events"],
        "duplicated_events": report["duplicated_events"],
        "skipped_events": report.get("skipped_events", 0),
        "reconnects": report["reconnects"],
        "gap_resumes": report.get("gap_resumes"),
        "failovers": report["failovers"],
        "cpu": report["cpu"],
    }


def table(paths):
    print("| drill | turns in fault | success in fault | p99 TTFT in fault (baseline) | "
          "recovery | acked w/o terminal | dup. terminals | seq holes / repeats | "
          "skipped by crash | reconnects | failovers | errors by code |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for path in paths:
        s = json.load(open(path))
        rate = s["success_rate_in_window"]
        rec = s["recovery_s"]
        codes = ", ".join(f"{c} {n}" for c, n in s["errors_by_code"].items()) or "-"
        print(f"| {s['drill']} | {s['turns_in_window']} | "
              f"{'-' if rate is None else f'{rate * 100:.1f} %'} | "
              f"{s['ttft_p99_in_window_ms']:.0f} ms ({s['ttft_p99_baseline_ms']:.0f} ms) | "
              f"{'not within the run' if rec is None else f'{rec:.0f} s'} | "
              f"{s['acked_without_terminal']} | {s['duplicate_terminals']} | "
              f"{s['lost_events']} / {s['duplicated_events']} | "
              f"{s.get('skipped_events', 0)} | {s['reconnects']} | "
              f"{s['failovers']} | {codes} |")


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2:])
    else:
        path, name, start, end = sys.argv[1:5]
        print(json.dumps(summarize(path, name, float(start), float(end)), indent=2))
