"""Process-level settings shared by the CLI's long-running jobs (stdlib only; imports nothing of retnet)."""
