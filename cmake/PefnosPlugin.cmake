# pefnos_add_plugin(NAME sources...): a pefnos plugin, a shared object without
# the lib prefix that pefnos loads from a plugin directory. Used in the tree
# and by third parties through the installed SDK (find_package(PefnosSDK)).
#
# In the pefnos tree, PEFNOS_PLUGIN_OUTPUT_DIR puts the module in the build
# tree's built-in plugin directory and PEFNOS_PLUGIN_DIR_REL installs it there.
# Out of the tree both are unset: the module is built in the caller's binary
# directory and installing it (or copying it into a plugin directory) is the
# caller's choice.
function(pefnos_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  set_target_properties(${name} PROPERTIES PREFIX "" CXX_VISIBILITY_PRESET hidden
                                           VISIBILITY_INLINES_HIDDEN ON)
  # GCC marks libstdc++'s inline statics (std::to_string, make_shared) GNU_UNIQUE,
  # which makes dlclose a no-op: the plugin could never be unloaded.
  target_compile_options(${name} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>)
  if(PEFNOS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PEFNOS_PLUGIN_OUTPUT_DIR})
  endif()
  target_link_libraries(${name} PRIVATE pefnos::sdk)
  if(PEFNOS_PLUGIN_DIR_REL)
    install(TARGETS ${name} LIBRARY DESTINATION ${PEFNOS_PLUGIN_DIR_REL})
  endif()
endfunction()
