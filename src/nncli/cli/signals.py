"""The terminating signals nncli catches, one list for both places that install handlers: entry.py
(before anything is imported) and app.py (for the command's run). Imports nothing: entry.py reads it
within its first milliseconds."""

TERMINATING = (
    "SIGINT",
    "SIGTERM",
    "SIGHUP",
    "SIGALRM",
    "SIGUSR1",
    "SIGUSR2",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
)
