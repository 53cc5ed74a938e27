-- pefnos schema v5: re-verifying a whole mirror on demand, as a command any
-- GUI can insert (`pefnos ctl verify MIRROR --all` uses it), and the index
-- the scheduler of mirror runs and the verification history read by.
SET LOCAL search_path = pefnos;

CREATE FUNCTION pefnos.verify_mirror(mirror integer) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pefnos.mirror m WHERE m.id = mirror) THEN
    RAISE EXCEPTION 'verify_mirror: no mirror with id %', mirror;
  END IF;
  RETURN pefnos.command('mirror-verify', jsonb_build_object('mirror', mirror));
END $$;

CREATE INDEX mirror_run_latest ON pefnos.mirror_run (mirror_id, id DESC);
CREATE INDEX mirror_verify_by_mirror ON pefnos.mirror_verify (mirror_id, id);
CREATE INDEX mirror_mark_target ON pefnos.mirror_mark (mirror_id, run_id);
