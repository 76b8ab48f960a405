"""Command-line tools around trained backbones (pictures of features and training curves)."""
