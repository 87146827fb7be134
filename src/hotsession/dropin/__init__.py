"""``hotsession-claude``: an executable that clients of the Claude Code CLI can name in its place.

``shim`` is the executable (it imports nothing of the engine, so it starts fast); ``wire`` its
WebSocket client; ``argv`` reads the CLI's command line; ``bridge`` serves a connection in the
daemon. See docs/drop-in.md.
"""
