-- Secrets and credentials. `material` is the sealed value (hex of nonce || ciphertext || tag, XChaCha20-Poly1305 under
-- the deployment's master key, with the row id as associated data): the database alone never holds a plaintext.

CREATE TABLE secrets (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id),
    name        TEXT NOT NULL,
    description TEXT,
    material    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    CONSTRAINT secrets_org_name_key UNIQUE (org_id, name)
);

CREATE TABLE credentials (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES orgs (id),
    user_id             TEXT REFERENCES users (id), -- set only for personal credentials
    name                TEXT NOT NULL,
    provider            TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('oauth2_authorization_code', 'oauth2_client_credentials',
                            'oauth2_jwt_bearer', 'oauth2_jwt_bearer_with_subject', 'oauth2_client_assertion',
                            'api_key', 'basic_auth', 'query_api_key')),
    scopes              TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
    provider_config     TEXT NOT NULL DEFAULT '{}', -- JSON object of string values, never secret
    allow_user_override BIGINT NOT NULL DEFAULT 0 CHECK (allow_user_override IN (0, 1)),
    status              TEXT NOT NULL CHECK (status IN ('active', 'needs_reauth', 'failed', 'revoked')),
    last_minted_at      BIGINT,
    last_minted_status  TEXT,
    material            TEXT NOT NULL,
    created_by_user_id  TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- One org-scoped credential per name, and one personal override per user and name.
CREATE UNIQUE INDEX credentials_org_name_key ON credentials (org_id, name) WHERE user_id IS NULL;
CREATE UNIQUE INDEX credentials_personal_name_key ON credentials (org_id, user_id, name) WHERE user_id IS NOT NULL;
