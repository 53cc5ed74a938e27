-- pefnos schema v4: bearer tokens for the API's writes. Only a hash is kept;
-- the token itself is shown once, by `pefnos ctl token create NAME`.
SET LOCAL search_path = pefnos;

CREATE TABLE api_token (
  id           serial PRIMARY KEY,
  name         pefnos.name NOT NULL UNIQUE,
  hash         text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
  active       boolean NOT NULL DEFAULT true,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz
);
