"""`capcalc import SOURCE`: write a validated model profile for a local checkpoint
folder or a Hugging Face repo id into the user profile directory."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from capcalc.cli.common import CsvFlag, JsonFlag, JsonlFlag, Output, ProfilesOpt, app, load_registry
from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.core.inputs import excerpt, read_bytes
from capcalc.report.output import TableSpec, record
from capcalc.report.summary import model_headline
from capcalc.sources.dirs import user_profile_dir
from capcalc.sources.loader import MAX_NAME_CHARS, PROFILE_NAME, model_from_dict


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CapcalcError(f"{directory}: cannot create the profile directory: {exc.strerror}") from None


def _write(target: Path, text: str, force: bool) -> str:
    """'written', 'unchanged' or 'overwritten'. Without ``force`` the file is created
    exclusively: a profile another process wrote a moment ago is never replaced."""
    if not force:
        try:
            write_atomic(target, text, exclusive=True)
            return "written"
        except FileExistsError:
            pass
        current = read_bytes(target, "profile") if target.exists() else b""
        if current == text.encode("utf-8"):
            return "unchanged"
        raise CapcalcError(
            f"{target} already exists and differs; pass --force to overwrite it or --name to choose another name",
            exit_code=1,
        )
    existed = target.exists()
    if existed and read_bytes(target, "profile") == text.encode("utf-8"):
        return "unchanged"
    write_atomic(target, text)
    return "overwritten" if existed else "written"


def render_profile(data: dict) -> str:
    """The YAML text of a profile mapping: deterministic, so re-importing is idempotent."""
    header = f"# Model profile written by `capcalc import` from {data['source']}\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def check_round_trip(text: str, path: Path):
    """Validate the YAML exactly as it will be read back; returns the profile."""
    return model_from_dict(yaml.safe_load(text), path)


@app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="A folder holding config.json, or a Hugging Face repo id (org/name[@rev]).")
    ],
    name: Annotated[
        Optional[str], typer.Option(help="Profile name (default: the repo or folder name).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Directory to write into (default: the user profile directory).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a different profile of the same name.")
    ] = False,
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Write a model profile from a local checkpoint folder or a Hugging Face repo."""
    from capcalc.sources import (
        hub,  # imports huggingface-hub: only this command and non-profile names need it
    )

    output = Output(json_, jsonl, csv_)
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise CapcalcError(
            f"--name: at most {MAX_NAME_CHARS} characters (it names a file), got {excerpt(name)}"
        )
    if name is not None and not PROFILE_NAME.match(name):
        raise CapcalcError(f"--name must be lower-case letters, digits, '-' or '.', got {excerpt(name)}")
    if out is None:  # the directory it writes to, created before it is read as a profile directory
        _make_dir(user_profile_dir())
    reg = load_registry(profiles)
    if hub.classify(source) is None:
        known = reg.knows_model(source)
        raise CapcalcError(
            f"{excerpt(source)} is neither a folder nor a Hugging Face repo id (org/name)"
            + ("; it is already a profile (see `capcalc show`)" if known else "")
        )
    imported = hub.load(source, profile_name=name)
    profile_name = imported.profile.name
    directory = out if out is not None else user_profile_dir()
    if directory.exists() and not directory.is_dir():
        raise CapcalcError(f"--out {directory} is a file, not a directory")
    target = directory / f"{profile_name}.yaml"
    text = render_profile(imported.data)
    written = check_round_trip(text, target)
    if dataclasses.replace(written, path="") != dataclasses.replace(imported.profile, path=""):
        raise CapcalcError(
            f"internal error: {target} would not read back as the imported profile", exit_code=1
        )

    action = _write(target, text, force)

    for warning in imported.warnings:
        print(f"capcalc: note: {warning}", file=sys.stderr)
    shipped = reg.models.get(profile_name)
    if shipped is not None and Path(shipped.path).resolve() != target.resolve():
        print(
            f"capcalc: note: a profile named {profile_name} already exists ({shipped.path}); "
            f"{target} will override it (use --name to keep both)",
            file=sys.stderr,
        )
    rec = record(
        model_headline(written),
        source=imported.data["source"],
        model_type=imported.model_type,
        native_dtype=written.native_dtype,
        params_source=imported.params_source,
        params_checkpoint=imported.params_checkpoint,
        profile_path=str(target),
        action=action,
    )
    counted = (
        f"parameters from {imported.params_source}"
        if imported.params_checkpoint is not None
        else "parameters computed from the architecture: no safetensors beside config.json"
    )
    use = f"capcalc kv {profile_name}" + (f" --profiles {directory}" if out is not None else "")
    notes = [f"{action} {target} ({imported.model_type}; {counted}).", f"Use it as: {use}"]
    output.emit([rec], TableSpec(title=f"Imported {source} as {profile_name}", notes=notes), single=True)
