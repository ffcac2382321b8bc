"""The Google Cloud Speech-to-Text v1 provider: one async client (one gRPC channel) for every
session, the audio formats passed through undecoded, and a :class:`~.google_stream.GoogleStream`
per session."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
from google.api_core.client_options import ClientOptions
from google.cloud.speech_v1 import SpeechAsyncClient
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport

from ..audio_format import AudioFormat, pcm16_mono
from ..errors import ProviderError
from ..session import SessionParams
from .base import Provider, TranscriptionStream
from .google_options import PASSTHROUGH, GoogleOptions, streaming_config
from .google_resend import resend_buffer
from .google_stream import GoogleStream

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class GoogleProvider(Provider):
    name = "google"
    Options = GoogleOptions
    path_options = ("credentials_file",)
    options: GoogleOptions

    def languages(self) -> tuple[str, ...] | None:
        return None  # Google serves 100+ languages and answers an unknown tag with a clear error

    def __init__(self, options: GoogleOptions) -> None:
        super().__init__(options)
        self._client: SpeechAsyncClient | None = None

    def input_format(self, client_format: AudioFormat) -> AudioFormat:
        encoding = client_format.encoding
        if encoding in ("webm", "ogg"):
            return client_format
        if encoding in PASSTHROUGH and client_format.sample_rate and 8_000 <= client_format.sample_rate <= 48_000:
            return client_format
        return pcm16_mono(16_000)

    async def start(self) -> None:
        opts = self.options
        if opts.insecure:
            channel = grpc.aio.insecure_channel(opts.api_endpoint)
            self._client = SpeechAsyncClient(transport=SpeechGrpcAsyncIOTransport(channel=channel))
            return
        credentials = await asyncio.to_thread(self._credentials)
        client_options = ClientOptions(api_endpoint=opts.api_endpoint) if opts.api_endpoint else None
        self._client = SpeechAsyncClient(credentials=credentials, client_options=client_options)

    def _credentials(self) -> Any:
        """Service-account file, else ADC; reads files (and may probe the metadata server)."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.oauth2 import service_account

        if self.options.credentials_file:
            try:
                return service_account.Credentials.from_service_account_file(
                    self.options.credentials_file, scopes=SCOPES)
            except (OSError, ValueError) as exc:
                raise ProviderError(f"google: cannot use credentials_file {self.options.credentials_file!r}: "
                                    f"{exc}", code="google_credentials") from None
        try:
            credentials, _ = google.auth.default(scopes=SCOPES)
        except DefaultCredentialsError as exc:
            raise ProviderError(f"google: no credentials: set providers.google.credentials_file or "
                                f"GOOGLE_APPLICATION_CREDENTIALS ({exc})", code="google_credentials") from None
        return credentials

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.transport.close()
            self._client = None

    def is_ready(self) -> bool:
        return self._client is not None

    def describe(self) -> Mapping[str, Any]:
        return {"endpoint": self.options.api_endpoint or "speech.googleapis.com",
                "model": self.options.model or "default", "streaming": True}

    def open_stream(self, session: SessionParams, audio_format: AudioFormat) -> TranscriptionStream:
        if self._client is None:
            raise ProviderError("google provider is not started", code="provider_unavailable")
        return GoogleStream(self._client, self.options, streaming_config(self.options, session, audio_format),
                            resend_buffer(audio_format))
