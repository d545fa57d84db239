"""A run: its file (YAML/JSON) with dotted overrides, the DeepSpeed JSON it names, and
``validate_run``, every check of the values that can fail before a process group exists."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from megagpt.config.checks import ConfigError, from_dict
from megagpt.config.deepspeed import check_deepspeed
from megagpt.config.sections import (
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    ParallelConfig,
    TrainConfig,
    model_config_from_dict,
)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with the file named in any error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror}).") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}:{getattr(e, 'lineno', '?')}: not valid JSON ({getattr(e, 'msg', e)}).") from None
    else:
        import yaml

        from megagpt.config import yaml12

        try:
            data = yaml12.load(text)
        except yaml.YAMLError as e:  # first line: the file and line, then what the parser saw
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark is not None else "?"
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}:{line}: not valid YAML ({what}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level.")
    return data


@dataclass
class RunConfig:
    """A whole run file: one section per component, plus the DeepSpeed JSON it points at."""

    model: ModelConfig
    parallel: ParallelConfig
    data: DataConfig
    train: TrainConfig
    deepspeed: dict  # the loaded ds_configs/*.json, with any ``deepspeed.*`` overrides applied
    finetune: FinetuneConfig | None = None  # only in fine-tuning run files
    model_keys: tuple = ()  # the model keys the run file (or an override) set explicitly
    notes: list = field(default_factory=list)  # choices validate_run made ("auto" DeepSpeed values), for the log

    @property
    def seq_length(self) -> int:
        return self.data.seq_length or self.model.n_positions


def _set_dotted(tree: dict, dotted: str, value, where: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{dotted}' goes through '{key}', which is not a section.")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.train_iters=50`` -> ('train.train_iters', 50); values parse as YAML scalars (with
    YAML 1.2's numbers: ``3e-3`` is a float, ``375e6`` an int)."""
    import yaml

    from megagpt.config import yaml12

    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value.")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml12.load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override '{text}': the value is not a YAML scalar.") from None


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a run YAML, apply dotted overrides (``model.n_layer=4``, ``deepspeed.bf16.enabled=true``),
    load the DeepSpeed JSON it names, and build the typed sections."""
    raw = load_file(path)
    sections = ("model", "parallel", "data", "train", "finetune")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown section '{unknown[0]}'; allowed sections are {', '.join(sections)}.")
    ds_overrides = []
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("deepspeed."):
            ds_overrides.append((key[len("deepspeed."):], value, text.strip()[len("deepspeed."):]))
        elif key.split(".")[0] in sections:
            _set_dotted(raw, key, value, "override")
        else:
            raise ConfigError(f"override '{text}': the key must start with one of "
                              f"{', '.join(sections)} or deepspeed.")
    try:
        train = from_dict(TrainConfig, raw.get("train") or {}, "train")
        sections_built = (model_config_from_dict(raw.get("model") or {}),
                          from_dict(ParallelConfig, raw.get("parallel") or {}, "parallel"),
                          from_dict(DataConfig, raw.get("data") or {}, "data"))
        finetune = from_dict(FinetuneConfig, raw["finetune"] or {}, "finetune") if "finetune" in raw else None
    except ConfigError as e:  # name the file (overrides are applied to it)
        raise ConfigError(f"{path}: {e}") from None
    ds_path = Path(train.deepspeed_config)
    if not ds_path.is_absolute() and not ds_path.exists():
        ds_path = Path(path).parent / ds_path  # relative to the run file
    ds = load_file(ds_path)
    for key, value, _ in ds_overrides:
        _set_dotted(ds, key, value, f"override deepspeed.{key}")
    check_deepspeed(ds, str(ds_path), {key: text for key, _, text in ds_overrides})
    if train.run_name is None:  # TensorBoard shows the run under the run file's name
        train = replace(train, run_name=Path(path).stem)
    model, parallel, data = sections_built
    return RunConfig(model=model, parallel=parallel, data=data, train=train, deepspeed=ds, finetune=finetune,
                     model_keys=tuple(raw.get("model") or {}))


def zero_stage_of(ds_config: Mapping[str, Any]):
    """The ZeRO stage a DeepSpeed config names, as written (0 when it has no ``zero_optimization``)."""
    return (ds_config.get("zero_optimization") or {}).get("stage", 0)


def zero_stage(ds_config: Mapping[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 when it has no ``zero_optimization``)."""
    return int(zero_stage_of(ds_config))


def check_stage(run: RunConfig) -> None:
    """The ZeRO stage against the layout: DeepSpeed's pipeline engine takes stages 0 and 1 only."""
    par, name = run.parallel, run.train.deepspeed_config
    stage = zero_stage(run.deepspeed)
    if par.pp_size > 1 and stage > 1:
        raise ConfigError(
            f"pipeline stages (parallel.pp_size={par.pp_size}) cannot run with ZeRO stage {stage} "
            f"({name}: zero_optimization.stage); either use layout 'zero3' with pp_size 1, or a "
            f"ZeRO stage 0/1 config such as ds_configs/3d.json.")
    if par.layout == "3d" and stage > 1:
        raise ConfigError(
            f"layout '3d' runs DeepSpeed's pipeline engine, which cannot use ZeRO stage {stage} "
            f"({name}: zero_optimization.stage); point train.deepspeed_config at ds_configs/3d.json "
            f"(ZeRO-1) or choose layout 'zero3'.")


def validate_run(run: RunConfig, world_size: int) -> RunConfig:
    """Every check of the run's values that can fail before a process group exists, with one
    sentence each. Choosing what the run file leaves open (a ZeRO stage of "auto") is the run
    setup's (``megagpt.train.setup.setup_run``), which calls this first."""
    par = run.parallel.validate(world_size)
    run.model.validate(par.tp_size)
    if run.finetune is None:
        run.data.validate()
    else:  # fine-tuning reads its task file, not shards
        run.finetune.validate()
    run.train.validate()
    if run.seq_length > run.model.n_positions:
        raise ConfigError(f"data.seq_length={run.seq_length} exceeds model.n_positions={run.model.n_positions}.")
    if zero_stage_of(run.deepspeed) != "auto":  # "auto" is chosen at run setup (train.setup), then checked
        check_stage(run)
    ds, name = run.deepspeed, run.train.deepspeed_config
    dp = par.dp_size(world_size)
    micro = ds.get("train_micro_batch_size_per_gpu")
    gas = ds.get("gradient_accumulation_steps", 1)
    total = ds.get("train_batch_size")
    if micro is None:
        raise ConfigError(f"{name}: set train_micro_batch_size_per_gpu (samples per rank per micro-step).")
    if total is not None and total != micro * gas * dp:
        raise ConfigError(
            f"{name}: train_batch_size={total} is not train_micro_batch_size_per_gpu x "
            f"gradient_accumulation_steps x data-parallel size = {micro} x {gas} x {dp} = "
            f"{micro * gas * dp}; drop train_batch_size (it is derived) or fix one of the three.")
    tr = run.train
    if tr.rampup_start_batch and tr.rampup_start_batch % (micro * dp):
        raise ConfigError(f"train.rampup_start_batch={tr.rampup_start_batch} must be a multiple of "
                          f"micro-batch x data-parallel size = {micro * dp}.")
    return run
