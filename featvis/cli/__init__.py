"""The ``featvis`` command line: ``featvis fit|validate|test|predict`` (LightningCLI) and ``featvis render``."""

from __future__ import annotations

import sys

from featvis.cli.fit import FeatvisCLI, FitConfigError, main
from featvis.cli.render import RenderError, render_main


def console_main() -> None:
    """Entry point of the ``featvis`` console script: ``featvis render ...`` or a LightningCLI subcommand."""
    if sys.argv[1:2] == ["render"]:
        sys.exit(render_main(sys.argv[2:]))
    main()


__all__ = ["FeatvisCLI", "FitConfigError", "RenderError", "console_main", "main", "render_main"]
