"""tui-translate: a terminal translator where you can watch the Transformer think."""

__version__ = "0.1.0"
