"""The root of every error a user can act on: the CLI prints its message, without a traceback, and exits 1."""


class VoxelbaseError(Exception):
    """Bad input or a state the user can fix; the message names the cause and what to do."""
