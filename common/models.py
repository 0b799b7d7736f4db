"""SQLAlchemy models: the source of truth for accounts, keys, jobs and credits.

Redis only carries job ids; everything a job is (its parameters, its state, what it
cost) lives here, so a lost or repeated message can never lose or double a job.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so Alembic migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # VARCHAR + CHECK rather than a native PostgreSQL enum: adding a value later is a
    # plain migration instead of an ALTER TYPE that cannot run in a transaction.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class JobStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class LedgerReason(enum.StrEnum):
    GRANT = "grant"  # credits added by an operator
    JOB_DEBIT = "job_debit"  # charged when a job is accepted
    JOB_REFUND = "job_refund"  # returned when a job ends FAILED or CANCELLED
    # An operator's correction, of either sign, always with a note saying why: the
    # ledger is append-only, so mistakes are fixed by new entries, never by edits.
    ADJUSTMENT = "adjustment"


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        CheckConstraint("rate_limit_per_minute > 0", name="rate_limit_per_minute_positive"),
        CheckConstraint("max_jobs_in_flight > 0", name="max_jobs_in_flight_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # Denormalised sum of the ledger, kept so that a debit is one conditional UPDATE
    # (which can never overdraw); it always equals the sum of `credit_ledger.amount`.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[AccountStatus] = mapped_column(
        _enum(AccountStatus, "account_status"), default=AccountStatus.ACTIVE
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Per-tenant limits; NULL = the settings' defaults (see common.limits).
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)  # per API key
    max_jobs_in_flight: Mapped[int | None] = mapped_column(Integer)  # QUEUED + PROCESSING

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="account")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # The key itself is never stored: only its SHA-256 (keys are 256-bit random, so a
    # fast hash is safe) and a short prefix that lets people tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    account: Mapped[Account] = relationship(back_populates="api_keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_account_id_created_at", "account_id", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        # The in-flight cap counts an account's unfinished jobs at every submit: this
        # partial index keeps that count proportional to the jobs in flight, not to
        # the account's whole history.
        Index(
            "ix_jobs_account_id_in_flight",
            "account_id",
            postgresql_where="status IN ('QUEUED', 'PROCESSING')",
        ),
        CheckConstraint("cost >= 0", name="cost_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"), default=JobStatus.QUEUED
    )
    # Validated request parameters (prompt, samples, steps, ...), as the worker needs them.
    params: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The seed actually used: resolved at submit time when the client sent -1, so a
    # retried job reproduces the same images.
    seed: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(Integer)
    input_key: Mapped[str] = mapped_column(String(512))
    output_keys: Mapped[list[str]] = mapped_column(JSONB, default=list)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class CreditLedgerEntry(Base):
    """Append-only: rows are only ever inserted (a trigger refuses UPDATE and DELETE)."""

    __tablename__ = "credit_ledger"
    __table_args__ = (
        # A job is debited once and refunded at most once, whatever retries happen.
        Index(
            "uq_credit_ledger_job_id_reason",
            "job_id",
            "reason",
            unique=True,
            postgresql_where="job_id IS NOT NULL",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"))
    amount: Mapped[int] = mapped_column(BigInteger)  # negative = debit
    reason: Mapped[LedgerReason] = mapped_column(_enum(LedgerReason, "ledger_reason"))
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
