"""The helper process of a parallel export: ``python -m feedback.exports.helper``.

Reads its job (pickled by the exporting process, see
:func:`feedback.exports.writer.export_to_file`) on standard input, writes its records into the
job's files, and prints ``[counts per split, user turns read]`` as JSON. Not for other callers.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from feedback.exports.writer import run_helper


def main() -> None:
    """Run the job on standard input; the result goes to standard output."""
    result = asyncio.run(run_helper(sys.stdin.buffer.read()))
    sys.stdout.buffer.write(orjson.dumps(result))


if __name__ == "__main__":
    main()
