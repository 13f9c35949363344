"""The one table of process exit codes (dramatiq's RET_* habit): a supervisor or a script can
tell a configuration error from a start-up failure, a timeout or a crash. Codes are distinct.
"""

from __future__ import annotations

#: Success; `bot health`: what was checked is healthy.
EXIT_OK = 0
#: The job ended failed/rejected/dead, what was checked is unhealthy, or a supervised child died.
EXIT_FAILED = 1
#: Bad input or configuration (a bad `BOT_*` value, a refused pool/option): nothing was done.
EXIT_USAGE = 2
#: A worker gave up registering with Redis after BOT_MAX_STARTUP_ATTEMPTS.
EXIT_STARTUP_FAILED = 3
#: `bot submit --wait`: the job did not end within --timeout.
EXIT_TIMEOUT = 4
