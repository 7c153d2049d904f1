"""Stop latency: how long `POST /api/sessions/{id}/stop` takes to answer for a running session.

    .venv/bin/python scripts/bench/stop_latency.py [--runs 20]
        [--url URL --loki-dir DIR] [--json out.json]

The server runs the load CLI in hold mode (`BENCH_MODE=hold`: it prints one
line and keeps running until signalled). One session at a time
(`--max-sessions 1`): start it, wait until it is `running`, time the stop
request over a keep-alive connection, then wait until the session is no longer
`stopping` (also timed: stop → final status) before starting the next one.
`--runs` is the number of sessions. With `--url`, the server must already use
such a CLI (any session command that keeps running until SIGTERM will do).
"""

from __future__ import annotations

import sys
import time

from _common import (
    Http,
    base_parser,
    check_url_args,
    load_cli_cmd,
    median,
    open_server,
    percentile,
    print_table,
    start_session,
    wait_session,
    write_json,
)


def main() -> int:
    parser = base_parser("Stop request latency for running sessions (black box).")
    parser.set_defaults(runs=20)
    args = parser.parse_args()
    check_url_args(args)
    server = open_server(
        args,
        "--cli",
        load_cli_cmd(),
        "--max-sessions",
        "1",
        env={"BENCH_MODE": "hold", "BENCH_HOLD_MAX": "120"},
        tag="stop",
    )
    answers, finals, results = [], [], []
    with server:
        http = Http(server.url)
        try:
            for run in range(args.runs):
                sid = start_session(server.url)
                wait_session(server.url, sid, {"running"}, timeout=30)
                began = time.perf_counter()
                status, body = http("POST", f"/api/sessions/{sid}/stop")
                answered = time.perf_counter() - began
                if status != 200:
                    raise SystemExit(f"stop answered {status}: {body}")
                final = wait_session(
                    server.url, sid, {"stopped", "failed", "completed"}, timeout=60, interval=0.005
                )
                ended = time.perf_counter() - began
                answers.append(answered * 1000)
                finals.append(ended * 1000)
                results.append(
                    {
                        "run": run + 1,
                        "session": sid,
                        "answer_ms": round(answered * 1000, 2),
                        "final_status": final,
                        "until_final_ms": round(ended * 1000, 1),
                    }
                )
                print(
                    f"  {sid}: answered in {answered * 1000:.2f} ms, {final} after "
                    f"{ended * 1000:.1f} ms",
                    flush=True,
                )
        finally:
            http.close()
    answers.sort()
    finals.sort()
    summary = {
        "sessions": len(answers),
        "answer_p50_ms": round(median(answers), 2),
        "answer_p99_ms": round(percentile(answers, 99), 2),
        "answer_max_ms": round(answers[-1], 2),
        "until_final_p50_ms": round(median(finals), 1),
        "until_final_max_ms": round(finals[-1], 1),
        "final_statuses": sorted({r["final_status"] for r in results}),
    }
    print_table(
        "stop latency",
        [
            "sessions",
            "answer p50 ms",
            "answer p99 ms",
            "answer max ms",
            "→ final p50 ms",
            "→ final max ms",
        ],
        [
            [
                summary["sessions"],
                summary["answer_p50_ms"],
                summary["answer_p99_ms"],
                summary["answer_max_ms"],
                summary["until_final_p50_ms"],
                summary["until_final_max_ms"],
            ]
        ],
    )
    write_json(args.json, "stop_latency", {"summary": summary, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
