"""SQLAlchemy models: the source of truth for accounts, keys, jobs and credits.

Redis only carries job ids; everything a job is (its parameters, its state, what it
cost) lives here, so a lost or repeated message can never lose or double a job.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Enum,
    Float,
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
        CheckConstraint("scheduling_weight > 0", name="scheduling_weight_positive"),
        CheckConstraint("max_url_fetches > 0", name="max_url_fetches_positive"),
        CheckConstraint("max_streams > 0", name="max_streams_positive"),
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
    # Share of the GPUs in the fair order when several accounts have queued work: an
    # account of weight 2 gets twice the GPU work of one of weight 1 (common/scheduler.py).
    scheduling_weight: Mapped[int | None] = mapped_column(Integer)
    # Open work in each API process (api/open_work.py): image URL fetches at once, and
    # event streams plus v1 waits open at once.
    max_url_fetches: Mapped[int | None] = mapped_column(Integer)
    max_streams: Mapped[int | None] = mapped_column(Integer)

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


# What makes two jobs compatible for one pipeline call: output size, scheduler, steps,
# strength and guidance (docs/scheduling.md "Batching"). Prompts, images, seeds and
# samples may differ. Kept in step with migration 0007.
BATCH_KEY_SQL = (
    "(params ->> 'width') || 'x' || (params ->> 'height') || '|' || (params ->> 'scheduler')"
    " || '|' || (params ->> 'num_inference_steps') || '|' || (params ->> 'strength')"
    " || '|' || (params ->> 'guidance_scale')"
)


class JobState(Protocol):
    """What a job's status answer reads: a loaded `Job`, or the plain row of a status
    poll's Core read (common/status_read.py), which skips the ORM's loading."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def queue(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def expired_at(self) -> datetime | None: ...
    @property
    def cancel_requested_at(self) -> datetime | None: ...


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_account_id_created_at", "account_id", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        # The retention sweep's search (common/retention.py): only finished, unexpired
        # jobs are in it, so it stays as small as the results still kept.
        Index(
            "ix_jobs_finished_at_unexpired",
            "finished_at",
            postgresql_where=(
                "expired_at IS NULL AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
            ),
        ),
        # The in-flight cap counts an account's unfinished jobs at every submit: this
        # partial index keeps that count proportional to the jobs in flight, not to
        # the account's whole history.
        Index(
            "ix_jobs_account_id_in_flight",
            "account_id",
            postgresql_where="status IN ('QUEUED', 'PROCESSING')",
        ),
        CheckConstraint("cost >= 0", name="cost_non_negative"),
        # The scheduler's look-up (common/scheduler.py): an account's queued jobs of one
        # pool, in line. Only QUEUED jobs are in it, so it is as small as the queue; it
        # carries what batch planning needs, so the planning reads only the index.
        Index(
            "ix_jobs_queued_line",
            "account_id",
            "queue",
            "queue_seq",
            postgresql_include=["batch_key", "work"],
            postgresql_where="status = 'QUEUED'",
        ),
        # Idempotency-Key: one job per key and account; jobs without a key are not in it.
        Index(
            "uq_jobs_account_id_idempotency_key",
            "account_id",
            "idempotency_key",
            unique=True,
            postgresql_where="idempotency_key IS NOT NULL",
        ),
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
    # Scheduling (common/scheduler.py, docs/scheduling.md). The worker pool (GPU_QUEUE of
    # the API that took it) whose workers may run it.
    queue: Mapped[str] = mapped_column(String(64), default="gpu", server_default="gpu")
    # Its place in its account's line (FIFO within an account): set by the trigger
    # `jobs_track_queue` whenever it enters the queue; kept when it is put back.
    queue_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Estimated GPU work (common.scheduler.job_work): what its claim charges its
    # account in the fair order.
    work: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    # Jobs with equal keys may share one pipeline call (batching); computed by
    # PostgreSQL from the parameters, so no writer can get it wrong.
    batch_key: Mapped[str | None] = mapped_column(Text, Computed(BATCH_KEY_SQL, persisted=True))
    # The lease of the worker running a PROCESSING job: set by its claim, renewed by its
    # heartbeat, required to record the result. The reconciler takes back a job whose
    # lease expired (its worker died) and queues it again (common/reconcile.py).
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the reconciler last sent the job's message again, and how many times it did
    # (it backs off, so a long queue is not flooded with duplicates).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The submit's Idempotency-Key (unique per account) and the SHA-256 of its canonical
    # body: the same key with the same body returns this job, with another body is refused.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the client asked to cancel the job (POST .../cancel). A QUEUED job becomes
    # CANCELLED at once; a PROCESSING one keeps running until its worker sees this
    # (or the faster Redis flag, common/cancel_flags.py) between two steps.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When retention deleted the job's objects (inputs and outputs); the row stays.
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class AccountQueue(Base):
    """An account's line in one worker pool: the fair order's state (common/scheduler.py).

    Kept by the trigger `jobs_track_queue` (migration 0007) as jobs enter and leave
    QUEUED; the scheduler only reads it.
    """

    __tablename__ = "account_queues"
    __table_args__ = (
        # The claim's first look-up: accounts with queued work, least pass first.
        Index(
            "ix_account_queues_queue_pass_active",
            "queue",
            "pass",
            "account_id",
            postgresql_where="queued > 0",
        ),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Virtual time: the GPU work this account was served, over its weight.
    pass_: Mapped[float] = mapped_column("pass", Float, default=0.0, server_default="0")
    queued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queued_work: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    next_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # No queued job of the line has a queue_seq below it (migration 0011): claims and
    # positions start reading the line there, past the entries of jobs claimed before.
    head_seq: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")


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


# --- webhooks (common/webhooks) -------------------------------------------------------


class WebhookEventType(enum.StrEnum):
    STARTED = "job.started"  # the worker claimed the job
    PROGRESS = "job.progress"  # throttled, while it runs
    COMPLETED = "job.completed"  # every terminal state: COMPLETED, FAILED, CANCELLED

    @property
    def short(self) -> str:
        """The name used in event filters: started, progress, completed."""
        return self.value.removeprefix("job.")


class WebhookDeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its first attempt, being attempted, or to retry
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # refused, retries used up, or the endpoint disabled


class WebhookAttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # failed; another attempt is scheduled
    FAILED = "failed"  # failed; no attempt follows (until a replay)


class WebhookEndpoint(Base):
    """An account-level receiver: gets the events in `events` of all the account's jobs."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # Filter names: "started", "progress", "completed".
    events: Mapped[list[str]] = mapped_column(JSONB)
    description: Mapped[str | None] = mapped_column(String(500))
    # Off by hand, or by the receiver answering 410 Gone; nothing is sent while off.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    # Its run of failed attempts (reset by a success or by enabling it): past
    # WEBHOOK_PAUSE_AFTER_FAILURES nothing is attempted until `paused_until`; past
    # WEBHOOK_DISABLE_AFTER_FAILURES over WEBHOOK_DISABLE_AFTER_SECONDS it is disabled.
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class WebhookSecret(Base):
    """An account's signing secrets (`whsec_<base64>`): the current one (expires_at NULL)
    and, for a while after a rotation, the previous one, which signs too."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (
        # One current secret per account, even when two requests create it at once.
        Index(
            "uq_webhook_secrets_account_id_current",
            "account_id",
            unique=True,
            postgresql_where="expires_at IS NULL",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    # Kept in clear: signing needs it (HMAC), unlike an API key, which is only compared.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event for one target (the job's own webhook_url, or an account endpoint).

    Written in the transaction of the job change that causes it (an outbox); the CPU
    worker sends it after the commit, retries it, and records every attempt.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_account_id_created_at", "account_id", "created_at"),
        # The sweep's search: only deliveries still to send are in it.
        Index(
            "ix_webhook_deliveries_next_attempt_at_pending",
            "next_attempt_at",
            postgresql_where="state = 'pending'",
        ),
        Index(
            "ix_webhook_deliveries_account_id_in_attempt",
            "account_id",
            postgresql_where="in_attempt_until IS NOT NULL",
        ),
        Index(
            "ix_webhook_deliveries_endpoint_id_in_attempt",
            "endpoint_id",
            postgresql_where="in_attempt_until IS NOT NULL",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id"), index=True)
    # NULL = the job's own webhook_url. Deleting an endpoint deletes its deliveries.
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    event_type: Mapped[WebhookEventType] = mapped_column(
        _enum(WebhookEventType, "webhook_event_type")
    )
    # The `webhook-id` header: one per event (shared by its targets), the same on every
    # attempt and replay, so receivers can drop duplicates.
    webhook_id: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[WebhookDeliveryState] = mapped_column(
        _enum(WebhookDeliveryState, "webhook_delivery_state"),
        default=WebhookDeliveryState.PENDING,
    )
    # Attempts started, all series together; also the claim token of the running one.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A replay starts a new series, with the whole retry schedule again.
    series: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    series_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the next attempt is due (pending only). While an attempt runs, it is pushed
    # past the attempt's timeout: a worker that dies mid-attempt is retried after that.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the delivery's message was last sent to the queue (the sweep re-sends after
    # WEBHOOK_REDISPATCH_AFTER_SECONDS, in case Redis lost it).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # While an attempt runs: when its claim expires. Attempts in flight per account and
    # per endpoint are the rows where it is set and not past (common/webhooks/delivery.py).
    in_attempt_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery, whatever its outcome."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... across series
    series: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: no HTTP answer
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[WebhookAttemptOutcome] = mapped_column(
        _enum(WebhookAttemptOutcome, "webhook_attempt_outcome")
    )
