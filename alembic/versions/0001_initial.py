"""Our tables: job runs, stats, rollups, alerts, revocation jobs.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 18:37:26.147576
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('entity', sa.Text(), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('count', sa.Integer(), server_default='1', nullable=False),
    sa.Column('suppressed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_value', sa.Float(), nullable=True),
    sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notified_severity', sa.String(length=16), nullable=True),
    sa.Column('notified_value', sa.Float(), nullable=True),
    sa.Column('clear_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_alerts_fingerprint')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_alerts_state_rule'), 'alerts', ['state', 'rule'], unique=False, schema='sessionkeeper')
    op.create_table('creation_rollups',
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('entity', sa.Text(), nullable=False),
    sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('users', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('scope', 'entity', 'minute', name=op.f('pk_creation_rollups')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_creation_rollups_minute'), 'creation_rollups', ['minute'], unique=False, schema='sessionkeeper')
    op.create_index(op.f('ix_creation_rollups_scope_minute'), 'creation_rollups', ['scope', 'minute'], unique=False, schema='sessionkeeper')
    op.create_table('job_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job', sa.String(length=32), nullable=False),
    sa.Column('trigger', sa.String(length=16), server_default='cli', nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('figures', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_job_runs_job_started_at'), 'job_runs', ['job', 'started_at'], unique=False, schema='sessionkeeper')
    op.create_table('revocation_jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('keep_session_id', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('revoked_count', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=16), server_default='api', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revocation_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_revocation_jobs_idempotency_key')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_revocation_jobs_status_created_at'), 'revocation_jobs', ['status', 'created_at'], unique=False, schema='sessionkeeper')
    op.create_index(op.f('ix_revocation_jobs_user_id'), 'revocation_jobs', ['user_id'], unique=False, schema='sessionkeeper')
    op.create_table('scan_state',
    sa.Column('table_key', sa.Text(), nullable=False),
    sa.Column('watermark', sa.DateTime(timezone=True), nullable=True),
    sa.Column('backfilled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('history_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('detector_state', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('table_key', name=op.f('pk_scan_state')),
    schema='sessionkeeper'
    )
    op.create_table('stats_snapshots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('taken_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('total_rows', sa.BigInteger(), nullable=False),
    sa.Column('active', sa.BigInteger(), nullable=False),
    sa.Column('expired_pending', sa.BigInteger(), nullable=True),
    sa.Column('null_expiry', sa.BigInteger(), nullable=True),
    sa.Column('users_active', sa.BigInteger(), nullable=True),
    sa.Column('per_user_p50', sa.Float(), nullable=True),
    sa.Column('per_user_p95', sa.Float(), nullable=True),
    sa.Column('per_user_p99', sa.Float(), nullable=True),
    sa.Column('per_user_max', sa.BigInteger(), nullable=True),
    sa.Column('created_since_previous', sa.BigInteger(), nullable=True),
    sa.Column('purge_lag_seconds', sa.Float(), nullable=True),
    sa.Column('idle_mean_seconds', sa.Float(), nullable=True),
    sa.Column('idle_p95_seconds', sa.Float(), nullable=True),
    sa.Column('table_bytes', sa.BigInteger(), nullable=True),
    sa.Column('index_bytes', sa.BigInteger(), nullable=True),
    sa.Column('unavailable', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), server_default=sa.text("'{}'"), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stats_snapshots')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_stats_snapshots_taken_at'), 'stats_snapshots', ['taken_at'], unique=False, schema='sessionkeeper')
    op.create_table('user_stats',
    sa.Column('user_id', sa.Text(), nullable=False),
    sa.Column('active_sessions', sa.Integer(), nullable=False),
    sa.Column('created_24h', sa.Integer(), nullable=True),
    sa.Column('distinct_ips', sa.Integer(), nullable=True),
    sa.Column('distinct_user_agents', sa.Integer(), nullable=True),
    sa.Column('oldest_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('newest_created_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_activity_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_stats')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_user_stats_active_sessions'), 'user_stats', ['active_sessions'], unique=False, schema='sessionkeeper')
    op.create_table('alert_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('alert_id', sa.BigInteger(), nullable=True),
    sa.Column('sink', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['sessionkeeper.alerts.id'], name=op.f('fk_alert_deliveries_alert_id_alerts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_deliveries')),
    schema='sessionkeeper'
    )
    op.create_index(op.f('ix_alert_deliveries_status_next_attempt_at'), 'alert_deliveries', ['status', 'next_attempt_at'], unique=False, schema='sessionkeeper')


def downgrade() -> None:
    op.drop_index(op.f('ix_alert_deliveries_status_next_attempt_at'), table_name='alert_deliveries', schema='sessionkeeper')
    op.drop_table('alert_deliveries', schema='sessionkeeper')
    op.drop_index(op.f('ix_user_stats_active_sessions'), table_name='user_stats', schema='sessionkeeper')
    op.drop_table('user_stats', schema='sessionkeeper')
    op.drop_index(op.f('ix_stats_snapshots_taken_at'), table_name='stats_snapshots', schema='sessionkeeper')
    op.drop_table('stats_snapshots', schema='sessionkeeper')
    op.drop_table('scan_state', schema='sessionkeeper')
    op.drop_index(op.f('ix_revocation_jobs_user_id'), table_name='revocation_jobs', schema='sessionkeeper')
    op.drop_index(op.f('ix_revocation_jobs_status_created_at'), table_name='revocation_jobs', schema='sessionkeeper')
    op.drop_table('revocation_jobs', schema='sessionkeeper')
    op.drop_index(op.f('ix_job_runs_job_started_at'), table_name='job_runs', schema='sessionkeeper')
    op.drop_table('job_runs', schema='sessionkeeper')
    op.drop_index(op.f('ix_creation_rollups_scope_minute'), table_name='creation_rollups', schema='sessionkeeper')
    op.drop_index(op.f('ix_creation_rollups_minute'), table_name='creation_rollups', schema='sessionkeeper')
    op.drop_table('creation_rollups', schema='sessionkeeper')
    op.drop_index(op.f('ix_alerts_state_rule'), table_name='alerts', schema='sessionkeeper')
    op.drop_table('alerts', schema='sessionkeeper')
