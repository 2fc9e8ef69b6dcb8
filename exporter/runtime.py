"""What the process needs of its host: the event-loop thread, signals, the open-files limit."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one, as Go's runtime does; the new soft limit.

    systemd's default soft limit (1024) is a legacy of ``select()``; the event loop
    uses epoll and needs a descriptor per connection.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as nr_open:
                wanted = int(nr_open.read())
        except (OSError, ValueError):
            return soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as err:
            log.info("open files limit stays %d (cannot raise it to %d: %s)", soft, wanted, err)
            return soft
        log.info("open files limit raised from %d to %d", soft, wanted)
        return wanted
    return soft


__all__ = ["raise_open_files_limit"]
