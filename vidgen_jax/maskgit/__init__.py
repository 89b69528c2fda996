"""MaskGIT / Token-Critic algorithms as pure functions (mask schedules, training masks and losses, decoding)."""
