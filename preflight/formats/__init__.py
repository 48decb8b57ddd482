"""Pure format checks: bytes in, findings out. No network, no path decisions."""
