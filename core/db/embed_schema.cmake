# Writes a C++ source holding every config/schema/NNNN_name.sql as a string,
# so that the binary knows its own schema version and needs no data files.
file(GLOB files RELATIVE "${SCHEMA_DIR}" "${SCHEMA_DIR}/[0-9][0-9][0-9][0-9]_*.sql")
list(SORT files)
set(body "")
foreach(f IN LISTS files)
  file(READ "${SCHEMA_DIR}/${f}" sql)
  string(REGEX MATCH "^([0-9]+)_(.*)\\.sql$" _ "${f}")
  math(EXPR version "${CMAKE_MATCH_1}")
  string(APPEND body "  {${version}, \"${CMAKE_MATCH_2}\", R\"pefnos_sql(${sql})pefnos_sql\"},\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from config/schema by core/db/embed_schema.cmake.\n#include \"core/db/migrate.h\"\nnamespace pefnos::db {\nconst std::vector<Migration>& migrations() {\n  static const std::vector<Migration> all = {\n${body}  };\n  return all;\n}\n}  // namespace pefnos::db\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
