"""The ``featvis`` command line: LightningCLI for fit/validate/test/predict."""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from featvis.data import CIFARDataModule
from featvis.model import ClassifierModule


class FeatvisCLI(LightningCLI):
    """LightningCLI with featvis's model and datamodule as defaults and their arguments linked."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")


def main(args: Sequence[str] | None = None) -> FeatvisCLI | None:
    """Run ``featvis fit|validate|test|predict [--config FILE] ...``.

    Args:
        args: command-line arguments; None reads ``sys.argv``.
    """
    return FeatvisCLI(
        ClassifierModule,
        CIFARDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "featvis"},
    )


def console_main() -> None:
    """Entry point of the ``featvis`` console script (exit status 0 on success)."""
    main()


if __name__ == "__main__":
    console_main()
