"""One job from message to report: intake and envelope, run (guard, decode, execute, record), the
job store and record, lost-child hand-back, progress, reports."""
