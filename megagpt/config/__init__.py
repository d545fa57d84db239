"""Typed configuration: one small dataclass per component, loaded from YAML/JSON files.

Every component receives only its own section. Unknown keys are rejected, and ``validate()``
turns a bad value into one sentence naming the key, the allowed values and the way out, before
any process group exists.
"""
from megagpt.config.checks import ConfigError, check_value, from_dict
from megagpt.config.run import (
                                RunConfig,
                                check_stage,
                                load_file,
                                load_run_config,
                                parse_override,
                                validate_run,
                                zero_stage,
                                zero_stage_of,
)
from megagpt.config.sections import (
                                LAYOUTS,
                                PRESETS,
                                DataConfig,
                                FinetuneConfig,
                                ModelConfig,
                                ParallelConfig,
                                TrainConfig,
                                arch_mismatch,
                                model_config,
                                model_config_from_dict,
)

__all__ = ["ConfigError", "check_value", "from_dict", "RunConfig", "check_stage", "load_file", "load_run_config",
           "parse_override", "validate_run", "zero_stage", "zero_stage_of", "LAYOUTS", "PRESETS", "DataConfig",
           "FinetuneConfig", "ModelConfig", "ParallelConfig", "TrainConfig", "arch_mismatch", "model_config",
           "model_config_from_dict"]
