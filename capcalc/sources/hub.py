"""A model argument that is not a profile name: a local checkpoint folder or a
Hugging Face Hub repo id (``org/name``, optionally ``@revision``).

Folders are read in place. Hub repos are read through huggingface-hub's own
cache: ``hf_hub_download(repo_id, "config.json", revision=...)`` fetches (or finds)
the config and nothing else, honouring ``HF_HOME`` / ``HF_HUB_CACHE`` (where the
cache is), ``HF_HUB_OFFLINE`` (cache only) and ``HF_TOKEN`` (gated and private
repos). Safetensors already in the cached snapshot are counted from their
headers; none are downloaded. Every Hub failure becomes one line saying what to do.

This module is imported only when a name is not a profile, so plain commands do
not pay for importing huggingface-hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import check_revision, excerpt, read_bytes
from capcalc.sources.hfconfig import ImportedModel, import_folder

#: org/name as the Hub spells repo ids (the Hub itself validates the details)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Located:
    """Where a model argument's config.json is."""

    folder: Path
    source: str  # recorded in the profile
    repo_id: str | None = None
    revision: str | None = None


def split_revision(name: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); the revision may itself hold '/' (refs/pr/1)."""
    repo, sep, revision = name.partition("@")
    return repo, (revision or None) if sep else None


def classify(name: str) -> str | None:
    """'folder', 'hub', or None when ``name`` looks like neither (then it is an unknown profile)."""
    try:
        exists = Path(name).expanduser().exists()
    except (OSError, ValueError):  # too long a name, an embedded NUL: not a folder of ours
        exists = False
    if exists:
        return "folder"
    if name.startswith((".", "/", "~")) or "\\" in name or os.path.isabs(name) or name.endswith(".json"):
        return "folder"
    repo, _ = split_revision(name)
    if REPO_ID.match(repo):
        return "hub"
    if "/" in name:
        return "folder"
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """huggingface-hub's cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return Path(home).expanduser() / "hub"


#: seconds to wait for the Hub's (or the proxy's) TCP handshake before calling it unreachable
PROBE_TIMEOUT_S = 1.0


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``, default
    huggingface.co), or to the proxy the environment names for it, opens within
    ``timeout_s``. One try: huggingface-hub itself retries an unreachable host for
    tens of seconds before it gives up."""
    import socket
    import urllib.parse
    import urllib.request

    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    target = endpoint
    if endpoint.hostname and not urllib.request.proxy_bypass(endpoint.hostname):
        proxy = urllib.request.getproxies().get(endpoint.scheme)
        if proxy:
            target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not target.hostname:
        return True  # nothing to probe: let the client say what is wrong
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
        with socket.create_connection((target.hostname, port), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def fetch_config(repo_id: str, revision: str | None = None) -> Path:
    """Path of ``config.json`` of a Hub repo in the local cache, downloading that one file if
    needed and allowed. Each failure is one CapcalcError line. When the Hub cannot be
    reached (:func:`hub_reachable`) only the cache is read, as with ``HF_HUB_OFFLINE=1``."""
    import huggingface_hub
    from huggingface_hub import errors

    cache = hub_cache_dir()
    cache_only = offline() or not hub_reachable()
    at = f"@{revision}" if revision else ""
    fetch_hint = f"`hf download {repo_id} config.json{' --revision ' + revision if revision else ''}`"
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            "config.json",
            revision=revision,
            cache_dir=str(cache),
            local_files_only=cache_only,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except errors.GatedRepoError:
        how = (
            "your HF_TOKEN has no access: accept the licence on its Hub page"
            if os.environ.get("HF_TOKEN")
            else f"accept the licence on https://huggingface.co/{repo_id} and set HF_TOKEN (or run `hf auth login`)"
        )
        raise CapcalcError(f"{repo_id} is a gated repository: {how}") from None
    except errors.RepositoryNotFoundError:
        raise CapcalcError(
            f"no Hugging Face repository {excerpt(repo_id)} (or it is private: set HF_TOKEN); "
            "see `capcalc models` for the profiles capcalc ships"
        ) from None
    except errors.RevisionNotFoundError:
        raise CapcalcError(
            f"{repo_id} has no revision {excerpt(revision)} (a branch, tag or commit)"
        ) from None
    except errors.RemoteEntryNotFoundError:
        raise CapcalcError(f"{repo_id}{at} has no config.json: not a transformers model repository") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        raise CapcalcError(
            f"{repo_id}{at}: config.json is not in the Hugging Face cache ({cache}) and {why}; "
            f"fetch it once online with {fetch_hint}, or pass a local folder holding config.json"
        ) from None
    except errors.HFValidationError as exc:
        raise CapcalcError(
            f"{excerpt(repo_id)} is not a valid Hugging Face repo id: {str(exc).splitlines()[0]}"
        ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CapcalcError(
            f"cannot fetch config.json of {repo_id}{at} from the Hugging Face Hub: {first}"
        ) from None
    return Path(path)


def check_cached_ref(repo_id: str, revision: str | None) -> None:
    """Refuse a revision that is not a git ref name or commit (``@../../../secret``), and a
    cached ``refs/`` file that does not hold a commit hash, before huggingface-hub joins
    either into a path. The message never carries the file's contents."""
    if revision is not None:
        check_revision(revision, f"{repo_id}@revision")
    if revision is not None and _COMMIT.match(revision):
        return
    ref = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    if not (ref.exists() or ref.is_symlink()):
        return
    try:
        content = read_bytes(ref, "ref").strip()
    except CapcalcError:
        content = b""
    if not _COMMIT.match(content.decode("ascii", "replace")):
        raise CapcalcError(
            f"{ref}: does not hold a commit hash (a damaged or tampered Hugging Face cache); "
            "delete it and fetch the repo again"
        )


def locate(name: str) -> Located:
    """The folder holding ``name``'s config.json: the folder itself, or its Hub cache snapshot."""
    kind = classify(name)
    if kind == "folder":
        path = Path(name).expanduser()
        if path.is_file() and path.name == "config.json":
            path = path.parent
        if not path.exists():
            raise CapcalcError(
                f"no such folder {excerpt(name)} (give a folder holding config.json, a Hugging Face repo id "
                "like Qwen/Qwen3-8B, or a profile name from `capcalc models`)"
            )
        if not path.is_dir():
            raise CapcalcError(f"{excerpt(name)} is a file; give the folder holding config.json")
        if not (path / "config.json").is_file():
            raise CapcalcError(
                f"{path}: no config.json here (a model folder holds a transformers config.json)"
            )
        return Located(path, str((path / "config.json").resolve()))
    if kind == "hub":
        repo_id, revision = split_revision(name)
        check_cached_ref(repo_id, revision)
        try:
            config = fetch_config(repo_id, revision)
        except ValueError:  # huggingface-hub's own path checks: never echo what it read
            raise CapcalcError(
                f"{repo_id}: its Hugging Face cache entry under {hub_cache_dir()} is damaged "
                "(a refs/ file that is not a commit hash); delete that repo's cache folder and fetch it again"
            ) from None
        commit = config.parent.name if _COMMIT.match(config.parent.name) else (revision or "main")
        source = f"https://huggingface.co/{repo_id}/blob/{commit}/config.json"
        return Located(config.parent, source, repo_id, revision)
    raise CapcalcError(f"{excerpt(name)} is neither a folder nor a Hugging Face repo id (org/name)")


def default_name(located: Located) -> str:
    """A profile name for an imported model: the repo's or folder's name, lower-case and hyphenated."""
    if located.repo_id:
        base = located.repo_id.split("/")[-1]
    else:
        folder = located.folder.resolve()
        # a Hub snapshot folder given directly: models--org--name/snapshots/<commit>
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            base = folder.parent.parent.name.split("--")[-1]
        else:
            base = folder.name
    slug = re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-.")
    return slug or "imported-model"


def load(name: str, profile_name: str | None = None) -> ImportedModel:
    """A validated profile for a folder or Hub repo id (see :func:`capcalc.sources.hfconfig.import_folder`)."""
    located = locate(name)
    aliases: tuple[str, ...] = ()
    if located.repo_id:
        aliases = (located.repo_id,) + ((name,) if located.revision else ())
    return import_folder(
        located.folder,
        name=profile_name or default_name(located),
        source=located.source,
        display_name=located.repo_id or located.folder.resolve().name,
        aliases=aliases,
    )
