"""stt_server: a self-hosted streaming speech-to-text websocket gateway."""

__version__ = "0.1.0"
