-- pefnos schema v1: the whole model of DESIGN.md.
--
-- Configuration tables use `active` flags instead of deletes and NOTIFY
-- `pefnos_config` on every change; history tables record what happened;
-- the `command` table is how a GUI talks to the daemon (INSERT + NOTIFY).
-- The database refuses bad rows itself: foreign keys and CHECK constraints.
-- Applied by `pefnos db migrate` inside one transaction.

CREATE SCHEMA IF NOT EXISTS pefnos;
SET LOCAL search_path = pefnos;

-- Names that reach command lines, URLs and file paths: no leading dash or dot,
-- no slashes, no spaces or control characters.
CREATE DOMAIN pefnos.name AS text
  CHECK (VALUE ~ '^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$');

CREATE FUNCTION pefnos.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

-- Payload: {"table": "repository", "id": 5, "op": "UPDATE"}. The row is the
-- truth; the master re-reads it.
CREATE FUNCTION pefnos.notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
  PERFORM pg_notify('pefnos_config', json_build_object(
    'table', TG_TABLE_NAME, 'id', to_jsonb(r)->'id', 'op', TG_OP)::text);
  RETURN NULL;
END $$;

------------------------------------------------------------------------------
-- Configuration
------------------------------------------------------------------------------

CREATE TABLE project (
  id          serial PRIMARY KEY,
  name        pefnos.name NOT NULL UNIQUE,
  description text NOT NULL DEFAULT '',
  active      boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- vcs names a VCS plugin; plugins are open-ended (third parties add them),
-- so the check is on the shape of the name, not a fixed list.
CREATE TABLE repository (
  id            serial PRIMARY KEY,
  project_id    integer NOT NULL REFERENCES project,
  name          pefnos.name NOT NULL,
  vcs           text NOT NULL CHECK (vcs ~ '^[a-z][a-z0-9-]{0,31}$'),
  url           text NOT NULL CHECK (url <> '' AND url !~ '^-' AND url !~ '[[:cntrl:]]'),
  parent_id     integer REFERENCES repository CHECK (parent_id <> id),
  poll_interval integer NOT NULL DEFAULT 60 CHECK (poll_interval BETWEEN 1 AND 86400),
  trusted       boolean NOT NULL DEFAULT true,
  active        boolean NOT NULL DEFAULT true,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (project_id, name)
);

-- A branch is an exact name or, with pattern, a glob that discovers branches:
-- those get their own rows with origin_id naming the pattern.
CREATE TABLE branch (
  id            serial PRIMARY KEY,
  repository_id integer NOT NULL REFERENCES repository,
  name          text NOT NULL CHECK (name <> '' AND length(name) <= 255
                  AND name !~ '^-' AND name !~ '[[:cntrl:]]' AND name !~ '(^|/)\.\.(/|$)'),
  pattern       boolean NOT NULL DEFAULT false,
  origin_id     integer REFERENCES branch CHECK (origin_id <> id),
  active        boolean NOT NULL DEFAULT true,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (repository_id, name),
  CHECK (NOT (pattern AND origin_id IS NOT NULL))
);

CREATE TABLE builder (
  id             serial PRIMARY KEY,
  project_id     integer NOT NULL REFERENCES project,
  name           pefnos.name NOT NULL,
  description    text NOT NULL DEFAULT '',
  steps          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(steps) = 'array'),
  requires_tags  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(requires_tags) = 'object'),
  properties     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
  trusted        boolean NOT NULL DEFAULT true,   -- needs a trusted worker
  max_concurrent integer NOT NULL DEFAULT 1 CHECK (max_concurrent BETWEEN 1 AND 1000),
  active         boolean NOT NULL DEFAULT true,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (project_id, name)
);

CREATE TABLE builder_branch (
  id         serial PRIMARY KEY,
  builder_id integer NOT NULL REFERENCES builder,
  branch_id  integer NOT NULL REFERENCES branch,
  active     boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (builder_id, branch_id)
);

-- secret_hash: the database never holds a worker's secret, only its hash.
CREATE TABLE worker (
  id          serial PRIMARY KEY,
  name        pefnos.name NOT NULL UNIQUE,
  secret_hash text,
  tags        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(tags) = 'object'),
  trusted     boolean NOT NULL DEFAULT true,
  slots       integer NOT NULL DEFAULT 1 CHECK (slots BETWEEN 1 AND 1000),
  active      boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- kind 'branch': one source branch to one target. kind 'collection': every
-- mirror of the same collection carries new commits to the others.
CREATE TABLE mirror (
  id                   serial PRIMARY KEY,
  name                 pefnos.name NOT NULL UNIQUE,
  kind                 text NOT NULL DEFAULT 'branch' CHECK (kind IN ('branch', 'collection')),
  collection           pefnos.name,
  source_branch_id     integer NOT NULL REFERENCES branch,
  target_repository_id integer NOT NULL REFERENCES repository,
  target_branch        text NOT NULL CHECK (target_branch <> '' AND target_branch !~ '^-'
                         AND target_branch !~ '[[:cntrl:]]'),
  delay                integer NOT NULL DEFAULT 30 CHECK (delay BETWEEN 0 AND 86400),
  verify               text NOT NULL DEFAULT 'all' CHECK (verify IN ('all', 'sample', 'none')),
  active               boolean NOT NULL DEFAULT true,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  CHECK ((kind = 'collection') = (collection IS NOT NULL))
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['project', 'repository', 'branch', 'builder', 'builder_branch',
                           'worker', 'mirror'] LOOP
    EXECUTE format('CREATE TRIGGER touch BEFORE UPDATE ON pefnos.%I FOR EACH ROW '
                   'EXECUTE FUNCTION pefnos.touch_updated_at()', t);
    EXECUTE format('CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE ON pefnos.%I '
                   'FOR EACH ROW EXECUTE FUNCTION pefnos.notify_config()', t);
  END LOOP;
END $$;

------------------------------------------------------------------------------
-- History
------------------------------------------------------------------------------

-- Poll state lives apart from `repository` so that polling does not look
-- like a configuration change.
CREATE TABLE repository_poll (
  repository_id   integer PRIMARY KEY REFERENCES repository,
  last_poll_at    timestamptz,
  last_success_at timestamptz,
  last_error      text,
  duration_ms     integer
);

-- One row per revision of a fork network (the root repository of the
-- parent chain), shared by every fork and branch that contains it.
CREATE TABLE commit (
  id              bigserial PRIMARY KEY,
  network_id      integer NOT NULL REFERENCES repository,
  revision        text NOT NULL CHECK (revision <> ''),
  author          text NOT NULL DEFAULT '',
  author_date     timestamptz,
  committer       text NOT NULL DEFAULT '',
  committer_date  timestamptz,
  message         text NOT NULL DEFAULT '',
  parents         text[] NOT NULL DEFAULT '{}',
  files           text[] NOT NULL DEFAULT '{}',
  tree            text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (network_id, revision)
);

CREATE TABLE branch_head (
  branch_id  integer PRIMARY KEY REFERENCES branch,
  revision   text NOT NULL CHECK (revision <> ''),
  commit_id  bigint REFERENCES commit,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE build_request (
  id          bigserial PRIMARY KEY,
  builder_id  integer NOT NULL REFERENCES builder,
  branch_id   integer REFERENCES branch,
  commit_id   bigint REFERENCES commit,
  revision    text NOT NULL CHECK (revision <> ''),
  reason      text NOT NULL CHECK (reason IN ('poll', 'force', 'retry', 'rebuild')),
  properties  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
  priority    integer NOT NULL DEFAULT 0,
  state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'claimed', 'done', 'cancelled')),
  claimed_by  text,
  lease_until timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  claimed_at  timestamptz,
  finished_at timestamptz,
  CHECK ((state = 'claimed') = (claimed_by IS NOT NULL AND lease_until IS NOT NULL)),
  CHECK ((state IN ('done', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE INDEX build_request_queued ON build_request (priority DESC, id) WHERE state = 'queued';

CREATE TABLE build (
  id          bigserial PRIMARY KEY,
  request_id  bigint NOT NULL REFERENCES build_request,
  builder_id  integer NOT NULL REFERENCES builder,
  number      integer NOT NULL CHECK (number > 0),
  worker_id   integer REFERENCES worker,
  master      text,
  state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'succeeded',
                'warnings', 'failed', 'error', 'interrupted', 'cancelled')),
  summary     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(summary) = 'object'),
  created_at  timestamptz NOT NULL DEFAULT now(),
  started_at  timestamptz,
  finished_at timestamptz,
  UNIQUE (builder_id, number),
  CHECK ((state IN ('pending', 'running')) = (finished_at IS NULL))
);
CREATE INDEX build_request_idx ON build (request_id);

CREATE TABLE step (
  id          bigserial PRIMARY KEY,
  build_id    bigint NOT NULL REFERENCES build,
  position    integer NOT NULL CHECK (position >= 0),
  name        text NOT NULL,
  type        text NOT NULL CHECK (type ~ '^[a-z][a-z0-9-]{0,31}$'),
  state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'succeeded',
                'warnings', 'failed', 'error', 'skipped', 'interrupted', 'cancelled')),
  exit_code   integer,
  summary     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(summary) = 'object'),
  started_at  timestamptz,
  finished_at timestamptz,
  UNIQUE (build_id, position)
);

-- Step output in chunks, in order of seq.
CREATE TABLE log (
  step_id    bigint NOT NULL REFERENCES step,
  seq        integer NOT NULL CHECK (seq >= 0),
  stream     text NOT NULL DEFAULT 'out' CHECK (stream IN ('out', 'err', 'info')),
  data       bytea NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (step_id, seq)
);

CREATE TABLE mirror_run (
  id          bigserial PRIMARY KEY,
  mirror_id   integer NOT NULL REFERENCES mirror,
  state       text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
  claimed_by  text,
  lease_until timestamptz,
  source_head text,
  target_head text,
  revisions   integer NOT NULL DEFAULT 0 CHECK (revisions >= 0),
  error       text,
  started_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  CHECK ((state = 'running') = (finished_at IS NULL))
);
-- One run per mirror at a time, enforced by the database.
CREATE UNIQUE INDEX mirror_run_one_running ON mirror_run (mirror_id) WHERE state = 'running';

-- The marks of both sides: source revision <-> target revision.
CREATE TABLE mirror_mark (
  mirror_id       integer NOT NULL REFERENCES mirror,
  source_revision text NOT NULL CHECK (source_revision <> ''),
  target_revision text NOT NULL CHECK (target_revision <> ''),
  run_id          bigint NOT NULL REFERENCES mirror_run,
  PRIMARY KEY (mirror_id, source_revision),
  UNIQUE (mirror_id, target_revision)
);

CREATE TABLE mirror_verify (
  id              bigserial PRIMARY KEY,
  mirror_id       integer NOT NULL REFERENCES mirror,
  run_id          bigint REFERENCES mirror_run,
  source_revision text NOT NULL,
  target_revision text NOT NULL,
  source_tree     text,
  target_tree     text,
  ok              boolean NOT NULL,
  differences     jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(differences) = 'array'),
  verified_at     timestamptz NOT NULL DEFAULT now()
);

------------------------------------------------------------------------------
-- Control
------------------------------------------------------------------------------

-- Every master that runs against this database, with its heartbeat.
CREATE TABLE master (
  name         text PRIMARY KEY CHECK (name <> ''),
  host         text NOT NULL DEFAULT '',
  pid          integer,
  version      text NOT NULL DEFAULT '',
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- What went wrong (or notably right), where a user of a GUI will look.
CREATE TABLE event (
  id      bigserial PRIMARY KEY,
  at      timestamptz NOT NULL DEFAULT now(),
  level   text NOT NULL CHECK (level IN ('info', 'warning', 'error')),
  source  text NOT NULL,
  message text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX event_at ON event (at);

-- A GUI inserts a row; the trigger wakes the master, which claims it with
-- FOR UPDATE SKIP LOCKED and a lease, runs it and writes the outcome back.
CREATE TABLE command (
  id           bigserial PRIMARY KEY,
  kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9-]{0,63}$'),
  args         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(args) = 'object'),
  state        text NOT NULL DEFAULT 'queued'
                 CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
  result       jsonb,
  error        text,
  requested_by text NOT NULL DEFAULT current_user,
  claimed_by   text,
  lease_until  timestamptz,
  attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  created_at   timestamptz NOT NULL DEFAULT now(),
  claimed_at   timestamptz,
  finished_at  timestamptz,
  CHECK ((state = 'running') = (claimed_by IS NOT NULL AND lease_until IS NOT NULL)),
  CHECK ((state IN ('done', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
  CHECK (state <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX command_pending ON command (id) WHERE state IN ('queued', 'running');

CREATE FUNCTION pefnos.notify_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM pg_notify('pefnos_command', NEW.id::text);
  ELSIF NEW.state IN ('done', 'failed', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state THEN
    PERFORM pg_notify('pefnos_command_done', NEW.id::text);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER notify AFTER INSERT OR UPDATE OF state ON command
  FOR EACH ROW EXECUTE FUNCTION pefnos.notify_command();

------------------------------------------------------------------------------
-- Functions for GUIs: each inserts a command row and returns its id.
------------------------------------------------------------------------------

CREATE FUNCTION pefnos.command(kind text, args jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO pefnos.command (kind, args) VALUES (kind, args) RETURNING id
$$;

CREATE FUNCTION pefnos.ping() RETURNS bigint LANGUAGE sql AS $$
  SELECT pefnos.command('ping')
$$;

CREATE FUNCTION pefnos.reload() RETURNS bigint LANGUAGE sql AS $$
  SELECT pefnos.command('reload')
$$;

CREATE FUNCTION pefnos.force_build(builder integer, branch integer, revision text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.builder b WHERE b.id = builder AND b.active) THEN
    RAISE EXCEPTION 'force_build: no active builder with id %', builder;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pefnos.branch r WHERE r.id = branch AND r.active) THEN
    RAISE EXCEPTION 'force_build: no active branch with id %', branch;
  END IF;
  RETURN pefnos.command('force-build', jsonb_build_object(
    'builder', builder, 'branch', branch, 'revision', revision));
END $$;

CREATE FUNCTION pefnos.poll_now(repository integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.repository r WHERE r.id = repository) THEN
    RAISE EXCEPTION 'poll_now: no repository with id %', repository;
  END IF;
  RETURN pefnos.command('poll-now', jsonb_build_object('repository', repository));
END $$;

CREATE FUNCTION pefnos.stop_build(build bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.build b WHERE b.id = build) THEN
    RAISE EXCEPTION 'stop_build: no build with id %', build;
  END IF;
  RETURN pefnos.command('stop-build', jsonb_build_object('build', build));
END $$;

CREATE FUNCTION pefnos.mirror_now(mirror integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.mirror m WHERE m.id = mirror AND m.active) THEN
    RAISE EXCEPTION 'mirror_now: no active mirror with id %', mirror;
  END IF;
  RETURN pefnos.command('mirror-now', jsonb_build_object('mirror', mirror));
END $$;
