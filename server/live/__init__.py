"""Live rooms: video calls on LiveKit, with join tokens, signed webhooks and a text chat.

The media flows through the LiveKit server, never through Tubelet. Tubelet keeps
the rooms (PostgreSQL), issues LiveKit access tokens (`tokens`), learns who joined
and left from LiveKit's signed webhooks (`webhooks`; participants in Redis, history
in PostgreSQL), and carries the room's chat (`chat`) across every instance.
"""
