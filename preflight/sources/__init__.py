"""Sources fetch bytes into a staging path they are given, nothing more."""
