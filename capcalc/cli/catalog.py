"""`capcalc models`, `capcalc gpus`, `capcalc show`: what capcalc knows."""

from __future__ import annotations

from typing import Annotated

import typer

from capcalc.cli.common import (
    CsvFlag,
    JsonFlag,
    JsonlFlag,
    Output,
    ProfilesOpt,
    app,
    load_registry,
    resolve_model,
)
from capcalc.core.errors import CapcalcError
from capcalc.core.inputs import excerpt
from capcalc.report.output import TableSpec, record
from capcalc.report.summary import gpu_details, gpu_headline, model_details, model_headline
from capcalc.schema.profiles import ModelProfile
from capcalc.sources.registry import Registry


@app.command()
def models(
    json_: JsonFlag = False, jsonl: JsonlFlag = False, csv_: CsvFlag = False, profiles: ProfilesOpt = None
):
    """List the known models with their headline numbers."""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    rows = [record(model_headline(m)) for m in sorted(reg.models.values(), key=lambda m: m.name)]
    out.emit(
        rows,
        TableSpec(
            title="Models",
            columns=[
                ("model", "model"),
                ("params_total", "params"),
                ("params_active", "active"),
                ("num_layers", "layers"),
                ("num_kv_heads", "KV heads"),
                ("head_dim", "head_dim"),
                ("kv_bytes_per_token", "KV / token"),
                ("max_context", "max ctx"),
                ("layout", "layout"),
            ],
        ),
    )


@app.command()
def gpus(
    json_: JsonFlag = False, jsonl: JsonlFlag = False, csv_: CsvFlag = False, profiles: ProfilesOpt = None
):
    """List the known GPUs with memory, bandwidth, dense bf16 rate and ridge point."""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    rows = [record(gpu_headline(g)) for g in sorted(reg.gpus.values(), key=lambda g: g.name)]
    out.emit(
        rows,
        TableSpec(
            title="GPUs (dense peak rates)",
            columns=[
                ("gpu", "gpu"),
                ("memory_bytes", "memory"),
                ("bandwidth_bytes_per_s", "bandwidth"),
                ("peak_flops_per_s_bf16", "bf16 dense"),
                ("ridge_point_bf16_flop_per_byte", "ridge (bf16)"),
                ("interconnect_bandwidth_bytes_per_s", "interconnect/dir"),
            ],
        ),
    )


def find_profile(reg: Registry, name: str):
    """A GPU or model by name or alias, else a model from a local folder or the Hub;
    unknown names list the closest of both kinds."""
    for lookup in (reg.model, reg.gpu):
        try:
            return lookup(name)
        except CapcalcError:
            pass
    from capcalc.sources.hub import classify

    if classify(name) is not None:
        return resolve_model(reg, name)
    raise CapcalcError(
        f"unknown model or GPU {excerpt(name)}; closest: {', '.join(reg.closest_profiles(name))}"
    )


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="A model or GPU name, alias or Hugging Face id.")],
    json_: JsonFlag = False,
    jsonl: JsonlFlag = False,
    csv_: CsvFlag = False,
    profiles: ProfilesOpt = None,
):
    """Show one model or GPU profile with its derived numbers."""
    out = Output(json_, jsonl, csv_)
    reg = load_registry(profiles)
    profile = find_profile(reg, name)
    if isinstance(profile, ModelProfile):
        rec = record(model_details(profile))
        title = f"{profile.display_name} ({profile.name})"
    else:
        rec = record(gpu_details(profile))
        title = f"{profile.display_name} ({profile.name})"
    out.emit([rec], TableSpec(title=title), single=True)
