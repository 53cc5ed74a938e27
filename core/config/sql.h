// Every query of the config room, in one place (private to core/config).
//
// Import upserts resolve references by natural keys inside the statement, so
// the importer never juggles ids. Each upsert returns no row when the row was
// already as wanted (nothing written, no NOTIFY), else one row: created or not.
#pragma once

#include <string>
#include <string_view>

namespace pefnos::config::sql {

// --- Import: existing rows that references in a document may name

inline constexpr const char* existing_repositories = R"(
SELECT p.name, r.name, pp.name, pr.name
FROM pefnos.repository r
JOIN pefnos.project p ON p.id = r.project_id
LEFT JOIN pefnos.repository pr ON pr.id = r.parent_id
LEFT JOIN pefnos.project pp ON pp.id = pr.project_id)";

inline constexpr const char* existing_branches = R"(
SELECT p.name, r.name, b.name, b.pattern
FROM pefnos.branch b
JOIN pefnos.repository r ON r.id = b.repository_id
JOIN pefnos.project p ON p.id = r.project_id)";

// --- Import: upserts, one per table ($ parameters documented per statement)

// $1 name, $2 description, $3 active
inline constexpr const char* upsert_project = R"(
INSERT INTO pefnos.project AS t (name, description, active) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET (description, active) = (EXCLUDED.description, EXCLUDED.active)
WHERE (t.description, t.active) IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.active)
RETURNING xmax = 0)";

// $1 project, $2 name, $3 vcs, $4 url, $5 parent's project, $6 parent (NULL: none),
// $7 poll_interval, $8 trusted, $9 active
inline constexpr const char* upsert_repository = R"(
INSERT INTO pefnos.repository AS t
  (project_id, name, vcs, url, parent_id, poll_interval, trusted, active)
VALUES ((SELECT id FROM pefnos.project WHERE name = $1::text), $2, $3, $4,
        (SELECT r.id FROM pefnos.repository r JOIN pefnos.project p ON p.id = r.project_id
          WHERE p.name = $5::text AND r.name = $6::text),
        $7, $8, $9)
ON CONFLICT (project_id, name) DO UPDATE
  SET (vcs, url, parent_id, poll_interval, trusted, active)
    = (EXCLUDED.vcs, EXCLUDED.url, EXCLUDED.parent_id, EXCLUDED.poll_interval,
       EXCLUDED.trusted, EXCLUDED.active)
WHERE (t.vcs, t.url, t.parent_id, t.poll_interval, t.trusted, t.active)
  IS DISTINCT FROM (EXCLUDED.vcs, EXCLUDED.url, EXCLUDED.parent_id, EXCLUDED.poll_interval,
                    EXCLUDED.trusted, EXCLUDED.active)
RETURNING xmax = 0)";

// $1 project, $2 repository, $3 name, $4 pattern, $5 active. A discovered row
// of the same name becomes a configured one (origin_id cleared).
inline constexpr const char* upsert_branch = R"(
INSERT INTO pefnos.branch AS t (repository_id, name, pattern, origin_id, active)
VALUES ((SELECT r.id FROM pefnos.repository r JOIN pefnos.project p ON p.id = r.project_id
          WHERE p.name = $1::text AND r.name = $2::text),
        $3, $4, NULL, $5)
ON CONFLICT (repository_id, name) DO UPDATE
  SET (pattern, origin_id, active) = (EXCLUDED.pattern, NULL, EXCLUDED.active)
WHERE (t.pattern, t.origin_id, t.active) IS DISTINCT FROM (EXCLUDED.pattern, NULL, EXCLUDED.active)
RETURNING xmax = 0)";

// $1 project, $2 name, $3 description, $4 steps, $5 requires_tags, $6 properties,
// $7 trusted, $8 max_concurrent, $9 active
inline constexpr const char* upsert_builder = R"(
INSERT INTO pefnos.builder AS t (project_id, name, description, steps, requires_tags, properties,
                                 trusted, max_concurrent, active)
VALUES ((SELECT id FROM pefnos.project WHERE name = $1::text), $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (project_id, name) DO UPDATE
  SET (description, steps, requires_tags, properties, trusted, max_concurrent, active)
    = (EXCLUDED.description, EXCLUDED.steps, EXCLUDED.requires_tags, EXCLUDED.properties,
       EXCLUDED.trusted, EXCLUDED.max_concurrent, EXCLUDED.active)
WHERE (t.description, t.steps, t.requires_tags, t.properties, t.trusted, t.max_concurrent,
       t.active)
  IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.steps, EXCLUDED.requires_tags,
                    EXCLUDED.properties, EXCLUDED.trusted, EXCLUDED.max_concurrent,
                    EXCLUDED.active)
RETURNING xmax = 0)";

// $1 builder's project, $2 builder, $3 repository's project, $4 repository, $5 branch, $6 active
inline constexpr const char* upsert_builder_branch = R"(
INSERT INTO pefnos.builder_branch AS t (builder_id, branch_id, active)
VALUES ((SELECT b.id FROM pefnos.builder b JOIN pefnos.project p ON p.id = b.project_id
          WHERE p.name = $1::text AND b.name = $2::text),
        (SELECT b.id FROM pefnos.branch b JOIN pefnos.repository r ON r.id = b.repository_id
           JOIN pefnos.project p ON p.id = r.project_id
          WHERE p.name = $3::text AND r.name = $4::text AND b.name = $5::text),
        $6)
ON CONFLICT (builder_id, branch_id) DO UPDATE SET active = EXCLUDED.active
WHERE t.active IS DISTINCT FROM EXCLUDED.active
RETURNING xmax = 0)";

// $1 name, $2 secret_hash, $3 tags, $4 trusted, $5 slots, $6 active
inline constexpr const char* upsert_worker = R"(
INSERT INTO pefnos.worker AS t (name, secret_hash, tags, trusted, slots, active)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE
  SET (secret_hash, tags, trusted, slots, active)
    = (EXCLUDED.secret_hash, EXCLUDED.tags, EXCLUDED.trusted, EXCLUDED.slots, EXCLUDED.active)
WHERE (t.secret_hash, t.tags, t.trusted, t.slots, t.active)
  IS DISTINCT FROM (EXCLUDED.secret_hash, EXCLUDED.tags, EXCLUDED.trusted, EXCLUDED.slots,
                    EXCLUDED.active)
RETURNING xmax = 0)";

// $1 name, $2 kind, $3 collection, $4-$6 source project, repository, branch,
// $7-$8 target project, repository, $9 target branch, $10 delay, $11 verify, $12 active
inline constexpr const char* upsert_mirror = R"(
INSERT INTO pefnos.mirror AS t (name, kind, collection, source_branch_id, target_repository_id,
                                target_branch, delay, verify, active)
VALUES ($1, $2, $3,
        (SELECT b.id FROM pefnos.branch b JOIN pefnos.repository r ON r.id = b.repository_id
           JOIN pefnos.project p ON p.id = r.project_id
          WHERE p.name = $4::text AND r.name = $5::text AND b.name = $6::text),
        (SELECT r.id FROM pefnos.repository r JOIN pefnos.project p ON p.id = r.project_id
          WHERE p.name = $7::text AND r.name = $8::text),
        $9, $10, $11, $12)
ON CONFLICT (name) DO UPDATE
  SET (kind, collection, source_branch_id, target_repository_id, target_branch, delay, verify,
       active)
    = (EXCLUDED.kind, EXCLUDED.collection, EXCLUDED.source_branch_id,
       EXCLUDED.target_repository_id, EXCLUDED.target_branch, EXCLUDED.delay, EXCLUDED.verify,
       EXCLUDED.active)
WHERE (t.kind, t.collection, t.source_branch_id, t.target_repository_id, t.target_branch,
       t.delay, t.verify, t.active)
  IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.collection, EXCLUDED.source_branch_id,
                    EXCLUDED.target_repository_id, EXCLUDED.target_branch, EXCLUDED.delay,
                    EXCLUDED.verify, EXCLUDED.active)
RETURNING xmax = 0)";

// $1 path, $2 active
inline constexpr const char* upsert_plugin_directory = R"(
INSERT INTO pefnos.plugin_directory AS t (path, active) VALUES ($1, $2)
ON CONFLICT (path) DO UPDATE SET active = EXCLUDED.active
WHERE t.active IS DISTINCT FROM EXCLUDED.active
RETURNING xmax = 0)";

// --- Export: COLLATE "C" so that the order never depends on the database's locale

inline constexpr const char* export_projects =
    R"(SELECT name, description, active FROM pefnos.project ORDER BY name COLLATE "C")";

inline constexpr const char* export_repositories = R"(
SELECT p.name, r.name, r.vcs, r.url, pp.name, pr.name, r.poll_interval, r.trusted, r.active
FROM pefnos.repository r
JOIN pefnos.project p ON p.id = r.project_id
LEFT JOIN pefnos.repository pr ON pr.id = r.parent_id
LEFT JOIN pefnos.project pp ON pp.id = pr.project_id
ORDER BY r.name COLLATE "C")";

// Discovered branches (origin_id set) belong to the scheduler, not to the configuration.
inline constexpr const char* export_branches = R"(
SELECT p.name, r.name, b.name, b.pattern, b.active
FROM pefnos.branch b
JOIN pefnos.repository r ON r.id = b.repository_id
JOIN pefnos.project p ON p.id = r.project_id
WHERE b.origin_id IS NULL
ORDER BY b.name COLLATE "C")";

inline constexpr const char* export_builders = R"(
SELECT p.name, b.name, b.description, b.steps::text, b.requires_tags::text, b.properties::text,
       b.trusted, b.max_concurrent, b.active
FROM pefnos.builder b
JOIN pefnos.project p ON p.id = b.project_id
ORDER BY b.name COLLATE "C")";

inline constexpr const char* export_builder_branches = R"(
SELECT bp.name, bu.name, rp.name, r.name, br.name, bb.active
FROM pefnos.builder_branch bb
JOIN pefnos.builder bu ON bu.id = bb.builder_id
JOIN pefnos.project bp ON bp.id = bu.project_id
JOIN pefnos.branch br ON br.id = bb.branch_id
JOIN pefnos.repository r ON r.id = br.repository_id
JOIN pefnos.project rp ON rp.id = r.project_id
WHERE br.origin_id IS NULL)";

inline constexpr const char* export_workers = R"(
SELECT name, secret_hash, tags::text, trusted, slots, active
FROM pefnos.worker ORDER BY name COLLATE "C")";

inline constexpr const char* export_mirrors = R"(
SELECT m.name, m.kind, m.collection, sp.name, sr.name, sb.name, tp.name, tr.name,
       m.target_branch, m.delay, m.verify, m.active
FROM pefnos.mirror m
JOIN pefnos.branch sb ON sb.id = m.source_branch_id
JOIN pefnos.repository sr ON sr.id = sb.repository_id
JOIN pefnos.project sp ON sp.id = sr.project_id
JOIN pefnos.repository tr ON tr.id = m.target_repository_id
JOIN pefnos.project tp ON tp.id = tr.project_id
ORDER BY m.name COLLATE "C")";

inline constexpr const char* export_plugin_directories =
    R"(SELECT path, active FROM pefnos.plugin_directory ORDER BY path COLLATE "C")";

// --- Model: each row's id and the whole row as JSON. `table` is always one
// of Model's fixed table names, never text from a notification.

inline std::string selectAllRows(std::string_view table) {
  return "SELECT t.id, row_to_json(t)::text FROM pefnos." + std::string(table) + " t";
}
// $1: an int[] of ids
inline std::string selectRowsById(std::string_view table) {
  return selectAllRows(table) + " WHERE id = ANY($1::int[])";
}

// $1 level, $2 message, $3 details (json)
inline constexpr const char* insert_event =
    "INSERT INTO pefnos.event (level, source, message, details) VALUES ($1, 'config', $2, $3)";

}  // namespace pefnos::config::sql
