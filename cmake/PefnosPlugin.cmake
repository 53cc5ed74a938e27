# pefnos_add_plugin(NAME sources...): a pefnos plugin, a shared object without
# the lib prefix that pefnos loads from a plugin directory. Used in the tree
# and by third parties through the installed SDK (find_package(PefnosSDK)).
function(pefnos_add_plugin name)
  add_library(${name} MODULE ${ARGN})
  set_target_properties(${name} PROPERTIES PREFIX "" CXX_VISIBILITY_PRESET hidden
                                           VISIBILITY_INLINES_HIDDEN ON)
  if(PEFNOS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PEFNOS_PLUGIN_OUTPUT_DIR})
  endif()
  target_link_libraries(${name} PRIVATE pefnos::sdk)
  if(PEFNOS_PLUGIN_DIR_REL)
    install(TARGETS ${name} LIBRARY DESTINATION ${PEFNOS_PLUGIN_DIR_REL})
  endif()
endfunction()
