"""File-system operations the server does as root on paths a user can influence.

Every path under a user's control may be a symlink, a FIFO or a 200 GB sparse file by the time root
touches it. The modules here are the only place such a path is created, chowned, opened, measured,
removed or connected to: ``paths`` (directories and files, through ``O_NOFOLLOW`` and directory file
descriptors) and ``sockets`` (a Unix socket's owner and its peer's credentials). Import from the
submodules.
"""
