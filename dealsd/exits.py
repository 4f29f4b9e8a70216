"""How dealsd's commands end: every exit status, in one place.

``dealsd run`` uses sysexits(3) names, because systemd and the operator read
them: the unit lists EX_CONFIG in RestartPreventExitStatus (restarting cannot
fix a typo), and each other code names a different thing to look at.
``dealsd status`` answers a question instead, in the shape monitoring checks
expect: 0 healthy, 1 not (or not running), 2 it could not even look.
"""

from __future__ import annotations

EX_OK = 0
EX_DATAERR = 65  # the database file is not ours to use (not SQLite, schema too new)
EX_CANTCREAT = 73  # the database cannot be opened or created
EX_TEMPFAIL = 75  # another instance holds the lock
EX_CONFIG = 78  # a bad config file or no usable API key: not restarted by systemd

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1  # unhealthy, or no daemon running
EXIT_NO_DATABASE = 2  # no database, or an unreadable config naming it

# `dealsd deals` and `dealsd web` end like status when they cannot look
# (EXIT_NO_DATABASE); besides:
EX_USAGE = 64  # deals: a filter this database cannot apply (--selection before selections)
EX_UNAVAILABLE = 69  # web: Datasette (the dealsd[web] extra) is not installed
