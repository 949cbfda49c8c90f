"""Audit the installed dependencies for known vulnerabilities with pip-audit (needs network to the advisory DB).

    pip install pip-audit && python scripts/audit_dependencies.py

Prints pip-audit's report; exits 1 when a vulnerable package is found, 2 when pip-audit is missing or cannot run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys


def main() -> int:
    if shutil.which("pip-audit") is None:
        print("pip-audit is not installed: pip install pip-audit", file=sys.stderr)
        return 2
    done = subprocess.run(["pip-audit", "--progress-spinner", "off", "--skip-editable"])
    return {0: 0, 1: 1}.get(done.returncode, 2)


if __name__ == "__main__":
    sys.exit(main())
