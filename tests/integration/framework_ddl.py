"""Each framework's real session-table DDL (PostgreSQL), as the framework or its adapter creates it."""

from __future__ import annotations

DDL: dict[str, list[str]] = {
    "sessionkeeper": [],  # created through `migrate --reference-table`
    # @auth/pg-adapter schema from the Auth.js docs
    "authjs": [
        "CREATE TABLE users (id SERIAL, name VARCHAR(255), email VARCHAR(255), "
        '"emailVerified" TIMESTAMPTZ, image TEXT, PRIMARY KEY (id))',
        'CREATE TABLE sessions (id SERIAL, "userId" INTEGER NOT NULL, expires TIMESTAMPTZ NOT NULL, '
        '"sessionToken" VARCHAR(255) NOT NULL, PRIMARY KEY (id))',
    ],
    # better-auth migrate output for PostgreSQL
    "better-auth": [
        'CREATE TABLE "user" ("id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, '
        '"email" text NOT NULL UNIQUE, "emailVerified" boolean NOT NULL, "image" text, '
        '"createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, '
        '"updatedAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL)',
        'CREATE TABLE "session" ("id" text NOT NULL PRIMARY KEY, "expiresAt" timestamptz NOT NULL, '
        '"token" text NOT NULL UNIQUE, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL, '
        '"updatedAt" timestamptz NOT NULL, "ipAddress" text, "userAgent" text, '
        '"userId" text NOT NULL REFERENCES "user" ("id") ON DELETE CASCADE)',
        'CREATE INDEX "session_userId_idx" ON "session" ("userId")',
    ],
    # django.contrib.sessions 0001_initial (USE_TZ=True)
    "django": [
        'CREATE TABLE "django_session" ("session_key" varchar(40) NOT NULL PRIMARY KEY, '
        '"session_data" text NOT NULL, "expire_date" timestamp with time zone NOT NULL)',
        'CREATE INDEX "django_session_expire_date_a5c62663" ON "django_session" ("expire_date")',
    ],
    # connect-pg-simple table.sql
    "connect-pg-simple": [
        'CREATE TABLE "session" ("sid" varchar NOT NULL COLLATE "default", "sess" json NOT NULL, '
        '"expire" timestamp(6) NOT NULL) WITH (OIDS=FALSE)',
        'ALTER TABLE "session" ADD CONSTRAINT "session_pkey" PRIMARY KEY ("sid") NOT DEFERRABLE INITIALLY IMMEDIATE',
        'CREATE INDEX "IDX_session_expire" ON "session" ("expire")',
    ],
    # Prisma migration of the Epic Stack Session model
    "epic-stack": [
        'CREATE TABLE "User" ("id" TEXT NOT NULL, "email" TEXT NOT NULL, CONSTRAINT "User_pkey" PRIMARY KEY ("id"))',
        'CREATE TABLE "Session" ("id" TEXT NOT NULL, "expirationDate" TIMESTAMP(3) NOT NULL, '
        '"createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" TIMESTAMP(3) NOT NULL, '
        '"userId" TEXT NOT NULL, CONSTRAINT "Session_pkey" PRIMARY KEY ("id"))',
        'CREATE INDEX "Session_userId_idx" ON "Session"("userId")',
    ],
    # Lucia v3 PostgreSQL guide
    "lucia": [
        "CREATE TABLE app_user (id TEXT NOT NULL PRIMARY KEY)",
        "CREATE TABLE user_session (id TEXT NOT NULL PRIMARY KEY, "
        "expires_at TIMESTAMPTZ NOT NULL, user_id TEXT NOT NULL REFERENCES app_user(id))",
    ],
    # activerecord-session_store migration (Rails 7, PostgreSQL)
    "rails": [
        'CREATE TABLE "sessions" ("id" bigserial primary key, "session_id" character varying NOT NULL, '
        '"data" text, "created_at" timestamp(6) NOT NULL, "updated_at" timestamp(6) NOT NULL)',
        'CREATE UNIQUE INDEX "index_sessions_on_session_id" ON "sessions" ("session_id")',
        'CREATE INDEX "index_sessions_on_updated_at" ON "sessions" ("updated_at")',
    ],
    # Supabase Auth (GoTrue) auth.sessions after its 2024 migrations
    "supabase": [
        "CREATE SCHEMA auth",
        "CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3')",
        "CREATE TABLE auth.sessions (id uuid NOT NULL PRIMARY KEY, user_id uuid NOT NULL, "
        "created_at timestamptz NULL, updated_at timestamptz NULL, factor_id uuid NULL, "
        "aal auth.aal_level NULL, not_after timestamptz NULL, refreshed_at timestamp NULL, "
        "user_agent text NULL, ip inet NULL, tag text NULL)",
        "CREATE INDEX sessions_user_id_idx ON auth.sessions USING btree (user_id)",
        "CREATE INDEX sessions_not_after_idx ON auth.sessions USING btree (not_after DESC)",
    ],
}

#: capabilities each profile must report available with default policy
EXPECTED_CAPABILITIES: dict[str, set[str]] = {
    "sessionkeeper": {
        "purge_expired",
        "purge_revoked",
        "per_user_stats",
        "revocation",
        "creation_rate",
        "ip_spread",
        "idle_figures",
    },
    "authjs": {"purge_expired", "per_user_stats", "revocation"},
    "better-auth": {
        "purge_expired",
        "per_user_stats",
        "revocation",
        "creation_rate",
        "ip_spread",
        "idle_figures",
    },
    "django": {"purge_expired"},
    "connect-pg-simple": {"purge_expired", "per_user_stats", "revocation"},
    "epic-stack": {"purge_expired", "per_user_stats", "revocation", "creation_rate", "idle_figures"},
    "lucia": {"purge_expired", "per_user_stats", "revocation"},
    "rails": {"creation_rate", "idle_figures"},
    "supabase": {
        "purge_expired",
        "per_user_stats",
        "revocation",
        "creation_rate",
        "ip_spread",
        "idle_figures",
    },
}
