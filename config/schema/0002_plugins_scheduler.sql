-- pefnos schema v2: plugins, their directories, push notifications, and
-- fork networks that the database keeps acyclic.
SET LOCAL search_path = pefnos;

-- Directories the master loads plugins from, besides the built-in one.
CREATE TABLE plugin_directory (
  id         serial PRIMARY KEY,
  path       text NOT NULL UNIQUE CHECK (path ~ '^/' AND path !~ '[[:cntrl:]]'),
  active     boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER touch BEFORE UPDATE ON plugin_directory
  FOR EACH ROW EXECUTE FUNCTION pefnos.touch_updated_at();
CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE ON plugin_directory
  FOR EACH ROW EXECUTE FUNCTION pefnos.notify_config();

-- What each master loaded or refused, and why: where a user looks.
CREATE TABLE plugin (
  master      text NOT NULL,
  path        text NOT NULL,
  state       text NOT NULL CHECK (state IN ('loaded', 'refused')),
  name        text,
  kind        text CHECK (kind IN ('vcs', 'step')),
  version     text,
  description text,
  reason      text,
  seen_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (master, path),
  CHECK ((state = 'refused') = (reason IS NOT NULL))
);

-- A fork network is a tree: a repository may not be its own ancestor.
CREATE FUNCTION pefnos.refuse_fork_cycle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.parent_id IS NOT NULL AND EXISTS (
      WITH RECURSIVE up(id, depth) AS (
        SELECT NEW.parent_id, 1
        UNION ALL
        SELECT r.parent_id, up.depth + 1 FROM pefnos.repository r JOIN up ON r.id = up.id
         WHERE r.parent_id IS NOT NULL AND up.depth < 1000)
      SELECT 1 FROM up WHERE id = NEW.id) THEN
    RAISE EXCEPTION 'repository % cannot be a fork of %: that would make a fork cycle',
      NEW.id, NEW.parent_id USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_fork_cycle BEFORE INSERT OR UPDATE OF parent_id ON repository
  FOR EACH ROW EXECUTE FUNCTION pefnos.refuse_fork_cycle();

-- For a post-receive hook: poll this repository now.
CREATE FUNCTION pefnos.notify_push(repository integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.repository r WHERE r.id = repository) THEN
    RAISE EXCEPTION 'notify_push: no repository with id %', repository;
  END IF;
  RETURN pefnos.command('poll-now', jsonb_build_object('repository', repository, 'reason', 'push'));
END $$;

-- How many polls a repository has had: for users, and for the benchmarks.
ALTER TABLE repository_poll ADD COLUMN polls bigint NOT NULL DEFAULT 0;

CREATE INDEX branch_repository ON branch (repository_id);
CREATE INDEX builder_branch_branch ON builder_branch (branch_id);
