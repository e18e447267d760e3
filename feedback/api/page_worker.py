"""The helper process's entry point: ``python -m feedback.api.page_worker`` (see
:mod:`feedback.api.helper`). A module of its own, so that running it does not import it twice."""

from __future__ import annotations

from feedback.api.helper import main

if __name__ == "__main__":
    main()
