"""Conversation transcripts outside the machine that ran them.

The Claude Code CLI mirrors its transcript (``--session-mirror``: the frames the Agent SDK
hands to its ``SessionStore``). :mod:`hotsession.transcripts.postgres` and
:mod:`hotsession.transcripts.sqlite` are ``SessionStore`` adapters (they pass
``claude_agent_sdk.testing.run_session_store_conformance``); :mod:`hotsession.transcripts.mirror`
turns the CLI's frames into ``append`` calls; :mod:`hotsession.transcripts.resume` writes a
stored transcript where ``claude --resume`` looks for it, on any machine.
"""
