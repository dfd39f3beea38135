"""Retry policy for tasks that write to the tracking store (a server can blip)."""

TRACKING_RETRIES = 3
TRACKING_RETRY_DELAYS = [2, 5, 15]
