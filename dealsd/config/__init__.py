"""The configuration: one TOML file, one frozen Struct per table, refused when wrong.

Every setting has its home in ``schema`` (type, default, range) and in the
commented sample ``config.toml`` at the repository root. ``load`` reads a file
into it and refuses a bad one with one line naming the file, the dotted key and
what is wrong (``errors`` words msgspec's refusals), because the daemon exits 78
(EX_CONFIG) on it and systemd will not restart it: that line is all the
operator gets. The API key never lives in the file; ``load`` finds it too.
``check`` is ``dealsd check-config``.

Importers use ``dealsd.config``: every public name of the parts is here.
"""

from __future__ import annotations

from dealsd.config.check import BUY_BOX_REFERENCES as BUY_BOX_REFERENCES
from dealsd.config.check import check_config as check_config
from dealsd.config.check import config_warnings as config_warnings
from dealsd.config.check import migration_note as migration_note
from dealsd.config.errors import ConfigError as ConfigError
from dealsd.config.errors import translate as translate
from dealsd.config.load import CREDENTIAL_NAME as CREDENTIAL_NAME
from dealsd.config.load import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from dealsd.config.load import NoApiKey as NoApiKey
from dealsd.config.load import canonical_query as canonical_query
from dealsd.config.load import find_api_key as find_api_key
from dealsd.config.load import load_api_key as load_api_key
from dealsd.config.load import load_config as load_config
from dealsd.config.load import read_toml as read_toml
from dealsd.config.load import reader as reader
from dealsd.config.load import resolve_config_path as resolve_config_path
from dealsd.config.schema import ALERT_CHANNELS_CREDENTIAL as ALERT_CHANNELS_CREDENTIAL
from dealsd.config.schema import CONSUMERS as CONSUMERS
from dealsd.config.schema import DEFAULT_SELECTION as DEFAULT_SELECTION
from dealsd.config.schema import LIVE_KEYS as LIVE_KEYS
from dealsd.config.schema import MEDIA_CATEGORIES_US as MEDIA_CATEGORIES_US
from dealsd.config.schema import AlertRuleConfig as AlertRuleConfig
from dealsd.config.schema import AlertsConfig as AlertsConfig
from dealsd.config.schema import BackfillerConfig as BackfillerConfig
from dealsd.config.schema import BatchSize as BatchSize
from dealsd.config.schema import Change as Change
from dealsd.config.schema import Config as Config
from dealsd.config.schema import DatabaseConfig as DatabaseConfig
from dealsd.config.schema import Domain as Domain
from dealsd.config.schema import FunnelConfig as FunnelConfig
from dealsd.config.schema import HttpUrl as HttpUrl
from dealsd.config.schema import JanitorConfig as JanitorConfig
from dealsd.config.schema import KeepaConfig as KeepaConfig
from dealsd.config.schema import LogConfig as LogConfig
from dealsd.config.schema import NonEmpty as NonEmpty
from dealsd.config.schema import NonNegativeInt as NonNegativeInt
from dealsd.config.schema import Percent as Percent
from dealsd.config.schema import PositiveFloat as PositiveFloat
from dealsd.config.schema import PositiveInt as PositiveInt
from dealsd.config.schema import ProfitConfig as ProfitConfig
from dealsd.config.schema import SelectionConfig as SelectionConfig
from dealsd.config.schema import SelectionName as SelectionName
from dealsd.config.schema import TokensConfig as TokensConfig
from dealsd.config.schema import UpserterConfig as UpserterConfig
from dealsd.config.schema import default_media_categories as default_media_categories
from dealsd.config.schema import default_selection as default_selection
from dealsd.config.schema import default_weights as default_weights
from dealsd.config.schema import diff_live as diff_live
from dealsd.exits import EX_CONFIG as EX_CONFIG
