"""The full schema-driven HTTP fuzz campaign: ≥ 2,000 generated requests against a live server on a tiny model.

    python scripts/fuzz_http.py [--examples 200] [--report benchmarks/fuzz_http.json]

Runs tests/test_http_fuzz.py with more examples per operation and prints the request and status counts; exits
non-zero when any request got a 5xx (each such request is printed, and becomes a test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="generated requests per API operation")
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "fuzz_http.json")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SFUMATO_FUZZ_EXAMPLES": str(args.examples),
           "SFUMATO_FUZZ_REPORT": str(args.report)}
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_http_fuzz.py"), "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env)
    counts = json.loads(args.report.read_text())
    print(f"requests: {counts['requests']} over {len(counts['operations'])} operations; "
          f"server errors (5xx): {counts['server_errors']}; by status: {counts['by_status']}")
    return done.returncode or (1 if counts["server_errors"] else 0)


if __name__ == "__main__":
    sys.exit(main())
