# Writes a C++ source holding every file of core/web/assets as a string, so
# that the daemon serves its page with no files installed and no build step
# that downloads anything.
file(GLOB files RELATIVE "${ASSETS_DIR}" "${ASSETS_DIR}/*")
list(SORT files)
set(body "")
foreach(f IN LISTS files)
  if(IS_DIRECTORY "${ASSETS_DIR}/${f}")
    continue()
  endif()
  if(NOT f MATCHES "^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    message(FATAL_ERROR "core/web/assets/${f}: asset names are letters, digits, '_', '.' and '-'")
  endif()
  file(READ "${ASSETS_DIR}/${f}" content)
  string(FIND "${content}" ")pefnos_asset\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "core/web/assets/${f} contains the raw-string delimiter )pefnos_asset\"")
  endif()
  get_filename_component(ext "${f}" LAST_EXT)
  set(type "application/octet-stream")
  if(ext STREQUAL ".html")
    set(type "text/html; charset=utf-8")
  elseif(ext STREQUAL ".css")
    set(type "text/css; charset=utf-8")
  elseif(ext STREQUAL ".js")
    set(type "text/javascript; charset=utf-8")
  elseif(ext STREQUAL ".svg")
    set(type "image/svg+xml")
  elseif(ext STREQUAL ".json")
    set(type "application/json")
  endif()
  string(APPEND body "  {\"${f}\", \"${type}\", R\"pefnos_asset(${content})pefnos_asset\"},\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "// Generated from core/web/assets by core/web/embed_assets.cmake.
#include \"core/web/assets.h\"
namespace pefnos::web {
namespace {
const Asset kAssets[] = {
${body}};
}  // namespace
const Asset* findAsset(std::string_view name) {
  for (const auto& a : kAssets)
    if (a.name == name) return &a;
  return nullptr;
}
}  // namespace pefnos::web
")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
