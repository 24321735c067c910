"""The registry's tables (SQLAlchemy Core): models by identifier and version, live endpoints, and
captured requests (`modelpod serve --capture-store`)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

models = Table(
    "modelpod_models",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("identifier", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("class_ref", String(512), nullable=False),
    Column("pickled_class", LargeBinary, nullable=True),  # only when the class cannot be imported
    Column("config", JSON, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("has_artifacts", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("identifier", "version", name="modelpod_models_identifier_version"),
)

settings = Table(  # facts about the store itself, e.g. where its artifact area is
    "modelpod_store",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(2048), nullable=False),
)

endpoints = Table(
    "modelpod_endpoints",
    metadata,
    Column("server_id", String(36), primary_key=True),
    Column("identifier", String(128), primary_key=True),
    Column("version", String(128), primary_key=True),
    Column("protocol", String(8), primary_key=True),  # "grpc" or "http"
    Column("address", String(512), nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Index("modelpod_endpoints_model", "identifier", "version"),
)

captures = Table(  # one captured request each: its JSON record as written to a capture file
    "modelpod_captures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(128), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("time", Float, nullable=False),
    Column("record", Text, nullable=False),
    Index("modelpod_captures_model_time", "model", "time"),
)
