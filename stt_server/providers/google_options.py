"""The Google provider's options, and the recognition config every call of a session starts
with (options, session and audio format → ``StreamingRecognitionConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from google.cloud.speech_v1 import RecognitionConfig, SpeechContext, StreamingRecognitionConfig

from ..audio_format import AudioFormat
from ..config import require, within
from ..session import SessionParams

Encoding = RecognitionConfig.AudioEncoding
# Client encodings Google takes as they are (FLAC is decoded: its frames cannot be cut for a
# restart without parsing them, and FLAC clients are rare).
PASSTHROUGH = {"linear16": Encoding.LINEAR16, "mulaw": Encoding.MULAW,
               "webm": Encoding.WEBM_OPUS, "ogg": Encoding.OGG_OPUS}
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)


@dataclass(frozen=True)
class GoogleOptions:
    # Service-account JSON key file; empty = Application Default Credentials.
    credentials_file: str = ""
    # host:port of the API; empty = speech.googleapis.com. For emulators and private endpoints.
    api_endpoint: str = ""
    # Plaintext gRPC to api_endpoint, no credentials (local emulators and test stand-ins only).
    insecure: bool = False
    # Recognition model (latest_long, phone_call, ...); a session's model= wins; empty = Google's default.
    model: str = ""
    # Use the enhanced variant of the model, where Google has one.
    use_enhanced: bool = False
    # Mask profanity with asterisks.
    profanity_filter: bool = False
    # Google ends each call after one utterance; the provider then starts the next call.
    single_utterance: bool = False
    # Words and phrases to favour (speech adaptation).
    phrase_hints: tuple[str, ...] = ()
    # Boost for phrase_hints (0 = Google's default weighting, up to 20).
    phrase_boost: float = 0.0
    # Restart each call after this many seconds (of wall clock, or of audio Google answered
    # for); Google's limit is ~305. The restart waits for the next final, up to a grace period.
    restart_after_seconds: float = 240.0
    # Audio since the last final kept for re-sending, at most (bounds memory in long silences).
    max_resend_seconds: float = 30.0
    # Consecutive transient failures retried before the session fails.
    max_retries: int = 3
    # First retry delay; doubles with each consecutive failure.
    retry_backoff_seconds: float = 0.5
    # Largest audio_content per request (Google's limit is 25600).
    max_request_bytes: int = 15_000
    # Send audio no faster than real time (Google's requirement); false only for tests.
    pace_realtime: bool = True

    def __post_init__(self) -> None:
        within("restart_after_seconds", self.restart_after_seconds, 1, 290)
        within("max_request_bytes", self.max_request_bytes, 1_000, 25_600)
        require(self.max_retries >= 0 and self.retry_backoff_seconds >= 0,
                "max_retries and retry_backoff_seconds must not be negative")
        require(self.max_resend_seconds > 0, "max_resend_seconds must be positive")
        within("phrase_boost", self.phrase_boost, 0, 20)
        require(not self.insecure or bool(self.api_endpoint), "insecure needs api_endpoint")


def streaming_config(opts: GoogleOptions, session: SessionParams, audio: AudioFormat) -> StreamingRecognitionConfig:
    """The first request of every call: the session's language and switches, the config's rest."""
    encoding = PASSTHROUGH[audio.encoding]
    if encoding in (Encoding.WEBM_OPUS, Encoding.OGG_OPUS):
        rate = audio.sample_rate if audio.sample_rate in OPUS_RATES else 48_000
        channels = audio.channels if audio.channels > 1 else 0
    else:
        rate, channels = audio.sample_rate or 16_000, audio.channels
    config = RecognitionConfig(
        encoding=encoding,
        sample_rate_hertz=rate,
        audio_channel_count=channels,
        language_code=session.language,
        enable_automatic_punctuation=session.punctuate,
        enable_word_time_offsets=session.words,
        enable_word_confidence=session.words,
        profanity_filter=opts.profanity_filter,
        max_alternatives=1,
        use_enhanced=opts.use_enhanced,
    )
    model = session.model or opts.model
    if model:
        config.model = model
    if opts.phrase_hints:
        config.speech_contexts = [SpeechContext(phrases=list(opts.phrase_hints), boost=opts.phrase_boost)]
    return StreamingRecognitionConfig(config=config, interim_results=session.interim_results,
                                      single_utterance=opts.single_utterance)
