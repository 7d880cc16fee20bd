"""The Textual app. Nothing in this package imports torch: it consumes torch-free results
(`tui_translate.results`) from a translator object handed to the app."""
